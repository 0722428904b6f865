package driver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// countLines checks that every "<prefix> i" for i in 1..n appears, and
// returns how many appear more than once.
func countLines(t *testing.T, text, prefix string, n int) int {
	t.Helper()
	seen := map[string]int{}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			seen[l]++
		}
	}
	dups := 0
	for i := 1; i <= n; i++ {
		k := fmt.Sprintf("%s %d", prefix, i)
		switch c := seen[k]; {
		case c == 0:
			t.Errorf("%q lost", k)
		case c > 1:
			dups += c - 1
		}
	}
	return dups
}

func loggerPID(t *testing.T, task *harness.Task) int {
	t.Helper()
	var st struct {
		LoggerPID int `json:"logger_pid"`
	}
	if err := json.Unmarshal(task.Handle.GetDriverState(), &st); err != nil {
		t.Fatal(err)
	}
	if st.LoggerPID == 0 {
		t.Fatal("no logger pid in driver state")
	}
	return st.LoggerPID
}

// Logs keep flowing while the plugin is killed and replaced: the detached
// follower survives and is adopted, no line is lost or repeated.
func TestLogsSurvivePluginKill(t *testing.T) {
	requireDocker(t)
	const n = 300
	c, task := startLogging(t, n)
	ctx := ctxFor(t, 60*time.Second)
	recoverAndReadAll(ctx, t, c, task, n)
	if d := countLines(t, task.Logs.Stdout(), "line", n) + countLines(t, task.Logs.Stderr(), "err", n); d != 0 {
		t.Errorf("%d duplicated lines although the follower never stopped", d)
	}
}

// When the follower itself dies too (with the plugin), the recovering
// plugin starts a new one that resumes from the recorded position: nothing
// lost, at most one duplicate per stream (the documented bound).
func TestLogsResumeAfterFollowerKill(t *testing.T) {
	requireDocker(t)
	const n = 300
	c, task := startLogging(t, n)
	pid := loggerPID(t, task)
	ctx := ctxFor(t, 60*time.Second)
	c.Plugin.Kill()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the follower: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // lines pile up in the engine meanwhile
	recoverAndReadAll(ctx, t, c, task, n)
	if d := countLines(t, task.Logs.Stdout(), "line", n); d > 1 {
		t.Errorf("stdout: %d duplicates, bound is 1", d)
	}
	if d := countLines(t, task.Logs.Stderr(), "err", n); d > 1 {
		t.Errorf("stderr: %d duplicates, bound is 1", d)
	}
}

// The last lines of a task that exits right away are not lost.
func TestLogsOfShortTask(t *testing.T) {
	requireDocker(t)
	const n = 2000
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(fmt.Sprintf(`args = ["/testapp", "log", "%d"]`, n))})
	waitExit(t, c, task, 30*time.Second)
	if err := task.Logs.WaitFor(fmt.Sprintf("line %d\n", n), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := countLines(t, task.Logs.Stdout(), "line", n); d != 0 {
		t.Errorf("%d duplicates", d)
	}
}

// A line longer than the engine's 16 KiB message size arrives whole, with
// no timestamps of the engine's inner pieces in it.
func TestLogsLongLine(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' x; echo; echo done"]`)})
	waitExit(t, c, task, 30*time.Second)
	if err := task.Logs.WaitFor("done\n", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	want := strings.Repeat("x", 40000) + "\ndone\n"
	if got := task.Logs.Stdout(); got != want {
		t.Errorf("stdout is %d bytes, want %d; starts %q", len(got), len(want), got[:min(len(got), 80)])
		if i := strings.Index(got, "Z "); i >= 0 {
			t.Errorf("inner timestamp at %d: %q", i, got[max(0, i-40):min(len(got), i+10)])
		}
	}
}

// recoverAndReadAll restarts the plugin, recovers the task and waits for the last of its n
// lines on stdout and on stderr.
func recoverAndReadAll(ctx context.Context, t *testing.T, c *harness.Client, task *harness.Task, n int) {
	t.Helper()
	if err := c.CrashPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	if err := task.Logs.WaitFor(fmt.Sprintf("line %d\n", n), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := task.Logs.WaitFor(fmt.Sprintf("err %d\n", n), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// startLogging starts a task that writes n numbered lines to stdout and to stderr, 10ms apart,
// and returns once the 20th is read.
func startLogging(t *testing.T, n int) (*harness.Client, *harness.Task) {
	t.Helper()
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(fmt.Sprintf(`args = ["/testapp", "log", "%d", "-every", "10ms", "-stderr", "-then", "sleep"]`, n))})
	if err := task.Logs.WaitFor("line 20", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return c, task
}
