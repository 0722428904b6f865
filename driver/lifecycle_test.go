package driver_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// Bad input gets an error naming the field, is not retried, and creates no
// container.
func TestBadInputCreatesNothing(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	cases := []struct {
		name   string
		config string
		raw    map[string]any // sent as is, bypassing HCL (wrong types)
		spec   harness.TaskSpec
		want   string
	}{
		{name: "unknown port label", config: appConfig(`ports = ["nope"]`, sleepArgs),
			spec: harness.TaskSpec{Ports: []harness.Port{{Label: "http"}}}, want: `ports: port label "nope"`},
		{name: "negative memory_hard_limit", config: appConfig(`memory_hard_limit = -5`, sleepArgs), want: "memory_hard_limit"},
		{name: "negative shm_size", config: appConfig(`shm_size = -1`, sleepArgs), want: "shm_size"},
		{name: "bad image reference", config: `image = "Not A Valid::Ref"`, want: "image"},
		{name: "no image and no syncer", config: `args = ["x"]`, want: "image"},
		{name: "image and syncer", config: appConfig("syncer {\n port = \"sync\"\n}"), want: "not both"},
		{name: "syncer without its secret (the template did not render)", config: "syncer {\n port = \"sync\"\n secret = \"\"\n}",
			spec: harness.TaskSpec{Task: "syncer", Ports: []harness.Port{{Label: "sync"}}}, want: "syncer.secret: the replication secret must be at least 16 bytes"},
		{name: "syncer port not in the network block", config: "syncer {\n port = \"sync\"\n secret = \"0123456789abcdef-driver-test\"\n}",
			spec: harness.TaskSpec{Task: "syncer", Ports: []harness.Port{{Label: "http"}}}, want: `syncer.port: "sync" is not a port of the group's network block`},
		{name: "bad pull timeout", config: appConfig(`image_pull_timeout = "soon"`, sleepArgs), want: "image_pull_timeout"},
		{name: "bad network mode", config: appConfig(`network_mode = "weird"`, sleepArgs), want: "network_mode"},
		{name: "bad ulimit", config: appConfig(`ulimit = { nofile = "lots" }`, sleepArgs), want: "ulimit.nofile"},
		{name: "relative data", config: appConfig(`data = "data"`, sleepArgs), want: "data"},
		{name: "wrong type: ports", raw: map[string]any{"image": testImage, "ports": "http"}, want: "ports"},
		{name: "wrong type: privileged", raw: map[string]any{"image": testImage, "privileged": "yes"}, want: "privileged"},
		{name: "wrong type: image", raw: map[string]any{"image": 42}, want: "image"},
		{name: "unknown option", raw: map[string]any{"image": testImage, "imgae": "x"}, want: "imgae"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec
			spec.Config = tc.config
			if tc.raw != nil {
				spec.Config = appConfig(sleepArgs)
			}
			task := prepare(t, c, withDefaults(spec))
			if tc.raw != nil {
				b, err := msgpack.Marshal(tc.raw)
				if err != nil {
					t.Fatal(err)
				}
				task.Config.MsgpackDriverConfig = b
			}
			err := c.StartTask(ctxFor(t, 30*time.Second), task)
			if err == nil {
				destroy(t, c, task)
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not name %q: %v", tc.want, err)
			}
			if plugin.IsRecoverable(err) {
				t.Errorf("bad input must not be retried: %v", err)
			}
			if n := containersOfAlloc(t, task.Spec.AllocID); n != 0 {
				t.Errorf("%d container(s) created", n)
			}
		})
	}
}

func withDefaults(s harness.TaskSpec) harness.TaskSpec {
	if s.Job == "" {
		s.Job, s.Group, s.Task = "test", "g", "app"
	}
	return s
}

func TestMissingImageIsClear(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := prepare(t, c, harness.TaskSpec{Config: `image = "127.0.0.1:1/nope:latest"`})
	began := time.Now()
	err := c.StartTask(ctxFor(t, 60*time.Second), task)
	if err == nil || !strings.Contains(err.Error(), "pulling image 127.0.0.1:1/nope:latest") {
		t.Fatalf("missing image: %v", err)
	}
	if time.Since(began) > 20*time.Second {
		t.Errorf("took %v", time.Since(began))
	}
	if n := containersOfAlloc(t, task.Spec.AllocID); n != 0 {
		t.Errorf("%d container(s) created", n)
	}
}

func TestExitCodeAndSignal(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "exit", "3"]`)})
	if res := waitExit(t, c, task, 30*time.Second); res.ExitCode != 3 || res.Signal != 0 || res.OOMKilled {
		t.Errorf("exit %+v", res)
	}
	ins, err := c.InspectTask(ctxFor(t, 10*time.Second), task)
	if err != nil || ins.GetTask().GetState() != driverpb.TaskState_EXITED || ins.GetTask().GetResult().GetExitCode() != 3 {
		t.Errorf("inspect after exit: %v %v", ins, err)
	}

	// SignalTask reaches the main process.
	trap := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "trap"]`)})
	if err := trap.Logs.WaitFor("trapping", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.SignalTask(ctxFor(t, 10*time.Second), trap, "SIGUSR1"); err != nil {
		t.Fatal(err)
	}
	if err := trap.Logs.WaitFor("got SIGUSR1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.SignalTask(ctxFor(t, 10*time.Second), trap, "SIGNOPE"); err == nil {
		t.Error("unknown signal accepted")
	}
}

func TestStopHonoursSignalAndTimeout(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	// The job's kill_signal reaches the app, which exits on it.
	task := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "trap", "-exit", "7"]`)})
	if err := task.Logs.WaitFor("trapping", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := c.StopTask(ctxFor(t, 30*time.Second), task, 10*time.Second, "SIGINT"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("stop took %v although the app exits on SIGINT", d)
	}
	if err := task.Logs.WaitFor("got SIGINT", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if res := waitExit(t, c, task, 10*time.Second); res.ExitCode != 7 {
		t.Errorf("exit %+v", res)
	}

	// An app that ignores the signal is killed after the timeout.
	stubborn := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "trap", "-ignore"]`)})
	if err := stubborn.Logs.WaitFor("trapping", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	if err := c.StopTask(ctxFor(t, 30*time.Second), stubborn, 1500*time.Millisecond, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	d := time.Since(began)
	if d < 1400*time.Millisecond || d > 10*time.Second {
		t.Errorf("stop took %v, want about the 1.5s timeout", d)
	}
	if err := stubborn.Logs.WaitFor("got SIGTERM", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if res := waitExit(t, c, stubborn, 10*time.Second); res.ExitCode != 137 || res.Signal != 9 {
		t.Errorf("exit %+v, want 137 / SIGKILL", res)
	}

	// Destroy is idempotent, stop of a destroyed task too.
	for i := 0; i < 2; i++ {
		if err := c.DestroyTask(ctxFor(t, 30*time.Second), stubborn, true); err != nil {
			t.Fatalf("destroy #%d: %v", i+1, err)
		}
	}
	if err := c.StopTask(ctxFor(t, 30*time.Second), stubborn, time.Second, "SIGTERM"); err != nil {
		t.Errorf("stop after destroy: %v", err)
	}
	if n := containersOfAlloc(t, stubborn.Spec.AllocID); n != 0 {
		t.Errorf("%d container(s) left after destroy", n)
	}
}

func TestOOMIsReported(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "oom", "256"]`), MemoryMB: 16})
	res := waitExit(t, c, task, 60*time.Second)
	if !res.OOMKilled {
		t.Errorf("exit %+v, want OOM killed", res)
	}
}

func TestStatsEachIntervalAndStopOnCancel(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["sh", "-c", "while :; do :; done"]`), CPU: 500, MemoryMB: 64})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const interval = 400 * time.Millisecond
	stream, err := c.TaskStats(ctx, task, interval)
	if err != nil {
		t.Fatal(err)
	}
	var stamps []time.Time
	var last *driverpb.ResourceUsage
	for len(stamps) < 5 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("stats stream: %v", err)
		}
		stamps = append(stamps, time.Now())
		last = resp.GetStats().GetAggResourceUsage()
	}
	// Paced by the interval: never early; late only by what a loaded
	// 2-core machine adds (the one-shot sample itself can take ~1s there).
	for i := 2; i < len(stamps); i++ {
		if gap := stamps[i].Sub(stamps[i-1]); gap < interval/2 {
			t.Errorf("sample %d came %v after the previous, interval %v", i, gap, interval)
		}
	}
	if total := stamps[len(stamps)-1].Sub(stamps[1]); total > time.Duration(len(stamps)-2)*interval+4*time.Second {
		t.Errorf("%d intervals took %v", len(stamps)-2, total)
	}
	cpu, mem := last.GetCpu(), last.GetMemory()
	if cpu.GetPercent() < 20 || cpu.GetTotalTicks() <= 0 {
		t.Errorf("a busy loop shows cpu %v", cpu)
	}
	if mem.GetUsage() == 0 || len(mem.GetMeasuredFields()) == 0 {
		t.Errorf("memory %v", mem)
	}
	cancel()
	deadline := time.After(5 * time.Second)
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case <-errc:
	case <-deadline:
		t.Fatal("stats stream did not end after cancel")
	}
}

// TestRecoveryAfterPluginKill kills the plugin with SIGKILL while a task
// runs, and checks the new plugin re-attaches from driver_state alone
// (the harness sends the handle without driver config): same container,
// not restarted, and fully operable (exec, signal, stop, wait).
func TestRecoveryAfterPluginKill(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "trap", "-exit", "5"]`)})
	before := containerOf(t, task)
	if err := task.Logs.WaitFor("trapping", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 90*time.Second)
	if err := c.CrashPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatalf("recover: %v", err)
	}
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatalf("recover is idempotent: %v", err)
	}
	after := containerOf(t, task)
	if after.ID != before.ID || after.State.StartedAt != before.State.StartedAt || after.RestartCount != 0 || !after.State.Running {
		t.Fatalf("container changed: %s %s -> %s %s", before.ID, before.State.StartedAt, after.ID, after.State.StartedAt)
	}
	if out, code := execIn(t, c, task, "echo", "still here"); code != 0 || !strings.Contains(out, "still here") {
		t.Errorf("exec after recovery: %d %q", code, out)
	}
	// And after an agent restart (re-attach, no SetConfig).
	if err := c.RestartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatalf("recover after agent restart: %v", err)
	}
	waitc := make(chan *plugin.ExitResult, 1)
	go func() {
		res, _ := c.WaitTask(ctx, task)
		waitc <- res
	}()
	if err := c.StopTask(ctx, task, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-waitc:
		if res == nil || res.ExitCode != 5 {
			t.Errorf("exit after recovery %+v", res)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("WaitTask after recovery never returned")
	}
}

// A task whose container is gone is recovered as exited with an error
// (Nomad then applies the restart policy); an unknown id likewise.
func TestRecoverMissingContainer(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(sleepArgs)})
	ctx := ctxFor(t, 60*time.Second)
	id := containerOf(t, task).ID
	if err := c.CrashPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dockerCli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatalf("recover of a removed container: %v", err)
	}
	res := waitExit(t, c, task, 10*time.Second)
	if res.Err == nil || !strings.Contains(res.Err.Error(), "no longer exists") {
		t.Errorf("exit of a lost task: %+v", res)
	}
	ins, err := c.InspectTask(ctx, task)
	if err != nil || ins.GetTask().GetState() != driverpb.TaskState_EXITED {
		t.Errorf("inspect lost task: %v %v", ins, err)
	}
	// A handle for an id no engine ever saw.
	unknown := prepare(t, c, harness.TaskSpec{Config: appConfig(sleepArgs)})
	unknown.Handle = &driverpb.TaskHandle{Version: 1, Config: unknown.Config}
	if err := c.RecoverTask(ctx, unknown); err != nil {
		t.Errorf("recover of an unknown id: %v", err)
	}
	// Unknown tasks are fine for stop/destroy.
	if err := c.StopAndDestroy(ctx, task, time.Second, "SIGTERM"); err != nil {
		t.Errorf("stop/destroy unknown: %v", err)
	}
}

func TestTaskEventsOnPullFailure(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev, err := c.TaskEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 16)
	go func() {
		for {
			e, err := ev.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					close(got)
				}
				return
			}
			got <- e.GetMessage()
		}
	}()
	task := prepare(t, c, harness.TaskSpec{Config: `image = "127.0.0.1:1/events:1"`})
	_ = c.StartTask(ctxFor(t, 30*time.Second), task)
	select {
	case m := <-got:
		if !strings.Contains(m, "Pulling image 127.0.0.1:1/events:1") {
			t.Errorf("event %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no pull event")
	}
}

// Unreadable driver_state: the container is found by its task id label.
func TestRecoverByLabel(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(sleepArgs)})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.CrashPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	task.Handle.DriverState = []byte("not json")
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatalf("recover by label: %v", err)
	}
	if out, code := execIn(t, c, task, "echo", "found"); code != 0 || !strings.Contains(out, "found") {
		t.Errorf("exec: %d %q", code, out)
	}
}

// Nomad restarting a task of the same allocation reuses the container
// name; an exited earlier attempt that was not destroyed is replaced.
func TestRestartAttemptReplacesExitedContainer(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	first := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "exit", "1"]`)})
	waitExit(t, c, first, 30*time.Second)
	spec := first.Spec
	spec.Config = appConfig(sleepArgs)
	second := start(t, c, spec) // same alloc and task name, new task id
	if info := containerOf(t, second); !info.State.Running {
		t.Errorf("second attempt not running: %+v", info.State)
	}
	if n := containersOfAlloc(t, spec.AllocID); n != 1 {
		t.Errorf("%d containers for the allocation, want 1", n)
	}
	// A running attempt is never replaced.
	third := prepare(t, c, spec)
	if err := c.StartTask(ctxFor(t, 30*time.Second), third); err == nil || !strings.Contains(err.Error(), "still runs") {
		t.Errorf("replacing a running attempt: %v", err)
	}
}
