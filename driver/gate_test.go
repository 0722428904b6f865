package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// startGatedTask starts an app task in an allocation that has a syncer (destroyed when the
// test ends): the test plays the syncer, writing the gate marker the syncer task's start
// leaves and announcing roles on the allocation's socket, clone to begin with.
func startGatedTask(t *testing.T, c *harness.Client, args string) (*harness.Task, *announce.Announcer) {
	t.Helper()
	task := prepare(t, c, harness.TaskSpec{Config: appConfig(args)})
	if err := os.WriteFile(filepath.Join(task.AllocDir(), "alloc", "tmp", ".bedrock-gated"), []byte("syncer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a, err := announce.Listen(ctx, announce.SocketPath(task.AllocDir()), announce.AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	a.Set(announce.State{Role: core.RoleClone, Term: 1})
	if err := c.StartTask(ctxFor(t, 60*time.Second), task); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { destroy(t, c, task) })
	return task, a
}

func master(term uint64, valid time.Duration) announce.State {
	return announce.State{Role: core.RoleMaster, Term: term, Deadline: time.Now().Add(valid)}
}

// waitRunning polls the container's state until it is want.
func waitRunning(t *testing.T, task *harness.Task, want bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if info := containerOf(t, task); info.State != nil && info.State.Running == want {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("container running=%v not reached within %v", want, within)
	return 0
}

// waitNotDone checks WaitTask has not returned: a gate closing is not the
// task's exit.
func waitNotDone(t *testing.T, done <-chan *plugin.ExitResult) {
	t.Helper()
	select {
	case r := <-done:
		t.Fatalf("the task ended (%+v) although only the gate moved", r)
	default:
	}
}

func waitAsync(t *testing.T, c *harness.Client, task *harness.Task) <-chan *plugin.ExitResult {
	out := make(chan *plugin.ExitResult, 1)
	go func() {
		r, err := c.WaitTask(ctxFor(t, 5*time.Minute), task)
		if err == nil {
			out <- r
		}
	}()
	return out
}

func TestGatedAppFollowsTheRole(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task, a := startGatedTask(t, c, `args = ["sleep", "300"]`)
	done := waitAsync(t, c, task)

	// A clone: the container exists but does not run.
	time.Sleep(time.Second)
	waitRunning(t, task, false, time.Second)

	// Promotion starts it; demotion stops it within the stop budget.
	a.Set(master(2, time.Minute))
	t.Logf("started %v after promotion", waitRunning(t, task, true, 3*time.Second))
	a.Set(announce.State{Role: core.RoleClone, Term: 3})
	if d := waitRunning(t, task, false, 3*time.Second); d > time.Second {
		t.Errorf("demotion took %v to stop the app", d)
	}
	waitNotDone(t, done)

	// The deadline closes the gate even while the syncer keeps talking.
	set := time.Now()
	a.Set(master(4, 1500*time.Millisecond))
	waitRunning(t, task, true, 3*time.Second)
	waitRunning(t, task, false, 5*time.Second)
	// The deadline reserves a 500ms stop budget before anyone else can be
	// promoted; allow polling and a loaded engine some slack on top.
	if past := time.Since(set) - 1500*time.Millisecond; past > time.Second {
		t.Errorf("the app still ran %v past its deadline", past)
	} else {
		t.Logf("app dead %v after its deadline (SIGTERM, %v grace, SIGKILL)", past, 300*time.Millisecond)
	}

	// A silent syncer (closed socket, like a crash) closes it too.
	a.Set(master(5, time.Minute))
	waitRunning(t, task, true, 3*time.Second)
	_ = a.Close()
	if d := waitRunning(t, task, false, 5*time.Second); d > 2*time.Second {
		t.Errorf("a silent syncer took %v to stop the app", d)
	}
	waitNotDone(t, done)

	// Stopping a clone's app task ends it cleanly and at once.
	start := time.Now()
	if err := c.StopTask(ctxFor(t, 30*time.Second), task, 5*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if !r.Successful() {
			t.Errorf("clone stop: %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitTask did not return after StopTask")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("stopping a clone's app took %v", d)
	}
}

// An app that exits by itself while master ends the task with its code.
func TestGatedAppExitAsMaster(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task, a := startGatedTask(t, c, `args = ["sh", "-c", "exit 3"]`)
	done := waitAsync(t, c, task)
	time.Sleep(500 * time.Millisecond)
	waitNotDone(t, done)
	a.Set(master(2, time.Minute))
	select {
	case r := <-done:
		if r.ExitCode != 3 {
			t.Errorf("exit %+v, want code 3", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the master's app exit did not end the task")
	}
}

// A plugin crash neither stops a running master's app nor starts a clone's.
func TestGatedAppSurvivesPluginCrash(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task, a := startGatedTask(t, c, `args = ["sleep", "300"]`)
	a.Set(master(2, time.Minute))
	waitRunning(t, task, true, 3*time.Second)
	before := containerOf(t, task).State.StartedAt

	if err := c.CrashPlugin(ctxFor(t, 60*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.RecoverTask(ctxFor(t, 30*time.Second), task); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	info := containerOf(t, task)
	if !info.State.Running || info.State.StartedAt != before {
		t.Fatalf("the master's app was disturbed by the plugin crash: running=%v started %s -> %s", info.State.Running, before, info.State.StartedAt)
	}
	// The recovered gate still acts.
	a.Set(announce.State{Role: core.RoleClone, Term: 3})
	waitRunning(t, task, false, 3*time.Second)
}
