package driver_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// Exec conformance, as `nomad alloc exec` uses it.
func TestExecConformance(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(sleepArgs)})

	run := func(t *testing.T, tty bool, size *plugin.TermSize, stdin string, closeStdin bool, cmd ...string) (*harness.Exec, *plugin.ExitResult) {
		t.Helper()
		ctx := ctxFor(t, 30*time.Second)
		e, err := c.StartExec(ctx, task, tty, size, cmd...)
		if err != nil {
			t.Fatal(err)
		}
		if stdin != "" {
			if _, err := e.Write([]byte(stdin)); err != nil {
				t.Fatal(err)
			}
		}
		if closeStdin {
			if err := e.CloseStdin(); err != nil {
				t.Fatal(err)
			}
		}
		res, err := e.Wait(ctx)
		if err != nil {
			t.Fatalf("exec %v: %v", cmd, err)
		}
		return e, res
	}

	t.Run("notty: stdout and stderr apart", func(t *testing.T) {
		e, res := run(t, false, nil, "", true, "sh", "-c", "echo out; echo err >&2")
		if res.ExitCode != 0 || e.Stdout() != "out\n" || e.Stderr() != "err\n" {
			t.Errorf("exit %d stdout %q stderr %q", res.ExitCode, e.Stdout(), e.Stderr())
		}
	})
	t.Run("notty: exit code 43", func(t *testing.T) {
		_, res := run(t, false, nil, "", true, "sh", "-c", "exit 43")
		if res.ExitCode != 43 {
			t.Errorf("exit %+v", res)
		}
	})
	t.Run("notty: stdin passthrough", func(t *testing.T) {
		e, res := run(t, false, nil, "hello from stdin\nsecond line\n", true, "cat")
		if res.ExitCode != 0 || e.Stdout() != "hello from stdin\nsecond line\n" {
			t.Errorf("exit %d stdout %q", res.ExitCode, e.Stdout())
		}
	})
	t.Run("notty: children of the main process", func(t *testing.T) {
		e, res := run(t, false, nil, "", true, "sh", "-c", "(sleep 0.2; echo from-child) & echo from-parent; wait")
		if res.ExitCode != 0 || !strings.Contains(e.Stdout(), "from-parent") || !strings.Contains(e.Stdout(), "from-child") {
			t.Errorf("exit %d stdout %q", res.ExitCode, e.Stdout())
		}
	})
	// Nomad's exec conformance shape: output of a background child that
	// outlives the exec'd process still arrives.
	t.Run("notty: a child outliving the command", func(t *testing.T) {
		e, res := run(t, false, nil, "", true, "sh", "-c", "( (sleep 1; echo from a child) & ); echo from main; exec sleep 0.2")
		if res.ExitCode != 0 || !strings.Contains(e.Stdout(), "from main") || !strings.Contains(e.Stdout(), "from a child") {
			t.Errorf("exit %d stdout %q", res.ExitCode, e.Stdout())
		}
	})
	// With a tty, a child outliving the command is hung up with the
	// terminal, as on any terminal; children the command waits for report.
	t.Run("tty: children of the command", func(t *testing.T) {
		e, res := run(t, true, &plugin.TermSize{Height: 24, Width: 80}, "", false, "sh", "-c", "(sleep 0.3; echo from a child) & echo from main; wait")
		if res.ExitCode != 0 || !strings.Contains(e.Stdout(), "from main") || !strings.Contains(e.Stdout(), "from a child") {
			t.Errorf("exit %d stdout %q", res.ExitCode, e.Stdout())
		}
	})
	t.Run("notty: not a terminal", func(t *testing.T) {
		e, _ := run(t, false, nil, "", true, "sh", "-c", "test -t 0 && echo tty || echo notty")
		if strings.TrimSpace(e.Stdout()) != "notty" {
			t.Errorf("stdout %q", e.Stdout())
		}
	})
	t.Run("tty: is a terminal", func(t *testing.T) {
		e, res := run(t, true, &plugin.TermSize{Height: 24, Width: 80}, "", true, "sh", "-c", "test -t 0 && echo tty || echo notty")
		if res.ExitCode != 0 || !strings.Contains(e.Stdout(), "tty") || strings.Contains(e.Stdout(), "notty") {
			t.Errorf("stdout %q", e.Stdout())
		}
	})
	t.Run("tty: exit code 43", func(t *testing.T) {
		_, res := run(t, true, &plugin.TermSize{Height: 24, Width: 80}, "", true, "sh", "-c", "exit 43")
		if res.ExitCode != 43 {
			t.Errorf("exit %+v", res)
		}
	})
	t.Run("tty: stty size after a resize", func(t *testing.T) {
		ctx := ctxFor(t, 30*time.Second)
		e, err := c.StartExec(ctx, task, true, &plugin.TermSize{Height: 24, Width: 80}, "sh")
		if err != nil {
			t.Fatal(err)
		}
		// Let the shell start, resize, then ask.
		time.Sleep(300 * time.Millisecond)
		if err := e.Resize(33, 123); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		if _, err := e.Write([]byte("stty size; exit 0\n")); err != nil {
			t.Fatal(err)
		}
		res, err := e.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || !strings.Contains(e.Stdout(), "33 123") {
			t.Errorf("exit %d, output %q", res.ExitCode, e.Stdout())
		}
	})
	t.Run("tty: initial size", func(t *testing.T) {
		e, _ := run(t, true, &plugin.TermSize{Height: 40, Width: 100}, "", false, "sh", "-c", "sleep 0.3; stty size")
		if !strings.Contains(e.Stdout(), "40 100") {
			t.Errorf("output %q", e.Stdout())
		}
	})
	t.Run("tty: stdin passthrough", func(t *testing.T) {
		e, res := run(t, true, &plugin.TermSize{Height: 24, Width: 80}, "echo typed-$((40+3))\nexit 0\n", false, "sh")
		if res.ExitCode != 0 || !strings.Contains(e.Stdout(), "typed-43") {
			t.Errorf("exit %d output %q", res.ExitCode, e.Stdout())
		}
	})
	t.Run("non-streaming exec", func(t *testing.T) {
		out, code := execIn(t, c, task, "sh", "-c", "echo ok; exit 43")
		if code != 43 || strings.TrimSpace(out) != "ok" {
			t.Errorf("exit %d out %q", code, out)
		}
	})
	t.Run("command not found", func(t *testing.T) {
		ctx := ctxFor(t, 30*time.Second)
		e, err := c.StartExec(ctx, task, false, nil, "/no/such/binary")
		if err != nil {
			return // refused up front: fine
		}
		res, err := e.Wait(ctx)
		if err == nil && res.ExitCode == 0 {
			t.Errorf("a missing binary exited 0")
		}
	})
}
