package driver_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/fixtures"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// nomadAPI answers GET /v1/job/<id> with the recorded Nomad 2.0.5 answers.
func nomadAPI(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/v1/job/")
		body, err := fixtures.Read("jobs-api/" + id + ".json")
		if err != nil {
			missing, _ := fixtures.Read("jobs-api/missing.body")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write(missing)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// collectEvents records every task event; the returned function waits up
// to two seconds for events of one task and returns their messages.
func collectEvents(t *testing.T, c *harness.Client) func(taskID string) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.TaskEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	byTask := map[string][]string{}
	go func() {
		for {
			ev, err := s.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			byTask[ev.GetTaskId()] = append(byTask[ev.GetTaskId()], ev.GetMessage())
			mu.Unlock()
		}
	}()
	return func(taskID string) []string {
		deadline := time.Now().Add(2 * time.Second)
		for {
			mu.Lock()
			got := append([]string(nil), byTask[taskID]...)
			mu.Unlock()
			if len(got) > 0 || time.Now().After(deadline) {
				return got
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestPlacementPolicyAtStart checks the runtime policy against the recorded
// job API answers: an unsafe group is refused (final error, task event, no
// container), a safe one starts, and an unreadable job is a warning.
func TestPlacementPolicyAtStart(t *testing.T) {
	requireDocker(t)
	srv := nomadAPI(t)
	c := startAgent(t, fmt.Sprintf("nomad {\n  address = %q\n}\n", srv.URL))
	events := collectEvents(t, c)

	for _, job := range []string{"count2", "nodistinct"} {
		task := prepare(t, c, harness.TaskSpec{Job: job, Group: "server", Config: appConfig(`args = ["sleep", "30"]`)})
		err := c.StartTask(ctxFor(t, 30*time.Second), task)
		if err == nil {
			destroy(t, c, task)
			t.Fatalf("%s: an unsafe group must be refused", job)
		}
		if plugin.IsRecoverable(err) || !strings.Contains(err.Error(), "allow_unsafe_placement") {
			t.Errorf("%s: want a final error that says how to opt out, got %v", job, err)
		}
		if n := containersOfAlloc(t, task.Spec.AllocID); n != 0 {
			t.Errorf("%s: a refused task created %d container(s)", job, n)
		}
		if evs := events(task.ID()); len(evs) == 0 || !strings.Contains(strings.Join(evs, "\n"), "refuses to start job \""+job) {
			t.Errorf("%s: want a task event explaining the refusal, got %q", job, evs)
		}
	}

	for _, job := range []string{"good", "jobdistinct"} {
		task := start(t, c, harness.TaskSpec{Job: job, Group: "server", Config: appConfig(`args = ["sleep", "30"]`)})
		if n := containersOfAlloc(t, task.Spec.AllocID); n != 1 {
			t.Errorf("%s: want the container, found %d", job, n)
		}
	}

	// Unknown to the API: a warning event, and the task runs.
	task := start(t, c, harness.TaskSpec{Job: "missing", Group: "server", Config: appConfig(`args = ["sleep", "30"]`)})
	if evs := events(task.ID()); len(evs) == 0 {
		t.Error("an unreadable job must leave a warning event")
	}
}

func TestPlacementOptOut(t *testing.T) {
	requireDocker(t)
	srv := nomadAPI(t)
	c := startAgent(t, fmt.Sprintf("allow_unsafe_placement = true\nnomad {\n  address = %q\n}\n", srv.URL))
	task := start(t, c, harness.TaskSpec{Job: "count2", Group: "server", Config: appConfig(`args = ["sleep", "30"]`)})
	if n := containersOfAlloc(t, task.Spec.AllocID); n != 1 {
		t.Errorf("opted out: want the container, found %d", n)
	}
}
