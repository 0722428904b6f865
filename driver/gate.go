package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
)

// Gating: in an allocation with a syncer task, the app's container runs
// only while the local syncer announces master with a deadline in the
// future (see syncer/announce). The container is created at StartTask, so
// every check, the image pull and the creation happen up front and a
// promotion only has to start it; it is started when the gate opens and
// stopped when it closes (demotion, deadline, a silent or frozen syncer).
// To Nomad the task runs the whole time: a clone's app task is "running"
// with its container stopped. Only an exit the driver did not cause, while
// the app runs as master, ends the task (and Nomad's restart policy
// applies).

// gateMarker is written by the syncer task's StartTask into the
// allocation's shared, non-replicated tmp dir; an app task that finds it is
// gated. A marker, rather than the announce socket, because the sidecar's
// socket may not exist yet when Nomad starts the main task.
const gateMarker = ".bedrock-gated"

// stopGrace is how long a gated app gets between SIGTERM and SIGKILL when
// the gate closes. It must stay well inside the lease's stop budget
// (500ms by default), which the announced deadline already reserves.
const stopGrace = 300 * time.Millisecond

// reportFailedTimeout bounds telling the syncer that the app failed as master; without the
// report the syncer keeps the lock until Nomad restarts the app (or the sidecar stops).
const reportFailedTimeout = time.Second

// gatePoll bounds how long the loop sleeps without re-reading the gate, as a
// safety net under the gate's own change notifications.
const gatePoll = 250 * time.Millisecond

func gateMarkerPath(allocDir string) string {
	return filepath.Join(allocDir, "alloc", "tmp", gateMarker)
}

// markGated records that the allocation's app tasks are gated.
func markGated(allocDir string) error {
	p := gateMarkerPath(allocDir)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil { //nolint:gosec // Nomad's alloc layout
		return fmt.Errorf("gate marker: %w", err)
	}
	if err := os.WriteFile(p, []byte("syncer\n"), 0o644); err != nil { //nolint:gosec // a marker, no secret
		return fmt.Errorf("gate marker: %w", err)
	}
	return nil
}

// isGated reports whether the allocation has a syncer task.
func isGated(allocDir string) bool {
	if allocDir == "" {
		return false
	}
	_, err := os.Stat(gateMarkerPath(allocDir))
	return err == nil
}

// runGated replaces watch for a gated task. running tells whether the
// container already runs (a recovered master).
func (h *taskHandle) runGated(ctx context.Context, running bool) {
	gate := announce.Follow(ctx, announce.SocketPath(h.state.AllocDir), announce.GateConfig{Logger: h.d.logger.Named("gate")})
	gateLoop(ctx, gate, handleApp{h}, running)
}

// gatedApp is what the gate loop does to the app's container and the task:
// the task handle does it with Docker, the unit tests with a fake.
type gatedApp interface {
	// start starts the container; the channels report its next exit.
	start(ctx context.Context) (<-chan container.WaitResponse, <-chan error, error)
	// stop stops a running container within the stop budget.
	stop(ctx context.Context, exitC <-chan container.WaitResponse, errC <-chan error) error
	// wait follows a container that already runs.
	wait(ctx context.Context) (<-chan container.WaitResponse, <-chan error)
	// fenced tells whether the driver's fence stopped the app (fence.go).
	fenced() bool
	// exited ends the task with the app's own exit.
	exited(ctx context.Context)
	// fail ends the task with err.
	fail(err error)
	// removed ends the task: the container was removed outside of Nomad.
	removed()
	// emit sends a task event.
	emit(msg string)
	// logError logs a failure that does not end the task.
	logError(msg string, err error)
}

// handleApp is the gated app of a task handle.
type handleApp struct{ h *taskHandle }

func (a handleApp) start(ctx context.Context) (<-chan container.WaitResponse, <-chan error, error) {
	return a.h.startGated(ctx)
}

func (a handleApp) stop(ctx context.Context, exitC <-chan container.WaitResponse, errC <-chan error) error {
	return a.h.stopGated(ctx, exitC, errC)
}

func (a handleApp) wait(ctx context.Context) (<-chan container.WaitResponse, <-chan error) {
	return a.h.waitExit(ctx, container.WaitConditionNotRunning)
}

func (a handleApp) fenced() bool               { return a.h.fenced.Load() }
func (a handleApp) exited(ctx context.Context) { a.h.recordExit(ctx) }
func (a handleApp) fail(err error)             { a.h.setExit(&plugin.ExitResult{ExitCode: -1, Err: err}) }
func (a handleApp) removed() {
	a.fail(fmt.Errorf("container %s was removed outside of Nomad", shortID(a.h.containerID)))
}
func (a handleApp) emit(msg string) { a.h.d.emit(a.h, "%s", msg) }
func (a handleApp) logError(msg string, err error) {
	a.h.d.logger.Error(msg, "task_id", a.h.taskID, "error", err)
}

// gateLoop runs the app while the gate is open and tells the task's story
// in task events (gateEvents) until ctx ends or the task does.
func gateLoop(ctx context.Context, gate *announce.Gate, app gatedApp, running bool) {
	gate.Report(running)
	started := time.Now()
	var exitC <-chan container.WaitResponse
	var errC <-chan error
	if running {
		exitC, errC = app.wait(ctx)
	}
	var ev gateEvents
	for {
		now := time.Now()
		st := gate.Status(now)
		// A recovered master keeps running until the gate has had one
		// silence period to reconnect: a plugin restart must not cost the
		// app. A deadline that passed meanwhile closes it at the first line.
		grace := running && st.ReceivedAt.IsZero() && time.Since(started) < announce.DefaultSilence
		switch {
		case st.Open && !running:
			var err error
			exitC, errC, err = app.start(ctx)
			if err != nil {
				app.emit(fmt.Sprintf("Could not start the app as master: %v", err))
				app.fail(err)
				return
			}
			running = true
			gate.Report(true)
			app.emit(ev.started(st.State.Term))
		case !st.Open && running && !grace:
			if err := app.stop(ctx, exitC, errC); err != nil {
				app.logError("stopping the gated app failed", err)
			}
			running, exitC, errC = false, nil, nil
			gate.Report(false)
			if msg := ev.stopped(now, st); msg != "" {
				app.emit(msg)
			}
		}
		for _, msg := range ev.observe(now, st) {
			app.emit(msg)
		}
		select {
		case <-ctx.Done():
			return
		case <-gate.Updates():
		case <-time.After(gatePoll):
		case <-exitC:
			if app.fenced() {
				// Stopped by the driver because its syncer died (fence.go):
				// a closed gate, not the task's end.
				running, exitC, errC = false, nil, nil
				gate.Report(false)
				app.emit("App stopped: the syncer exited")
				continue
			}
			// The app ended by itself while master: that is the task's exit, and this
			// instance's mastership is lost. The syncer hears it first and hands the lock
			// to a caught-up clone at once; Nomad's restart block then brings the task back,
			// as a clone (the syncer does not campaign until it is back).
			rctx, cancel := context.WithTimeout(ctx, reportFailedTimeout)
			if err := gate.ReportFailed(rctx); err != nil {
				app.logError("telling the syncer that the app failed", err)
			}
			cancel()
			app.emit(ev.failed(gate.Status(time.Now()).State.Term))
			app.exited(ctx)
			return
		case err := <-errC:
			if ctx.Err() != nil {
				return
			}
			if cerrdefs.IsNotFound(err) {
				app.removed()
				return
			}
			// The engine hiccuped: ask again for the running container.
			exitC, errC = app.wait(ctx)
		}
	}
}

func (h *taskHandle) waitExit(ctx context.Context, cond container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	cli, err := h.d.client()
	if err != nil {
		ec := make(chan error, 1)
		ec <- err
		return nil, ec
	}
	return cli.ContainerWait(ctx, h.containerID, cond)
}

// startGated starts the created (or gate-stopped) container and its log
// follower. The wait is registered before the start so no exit is missed.
func (h *taskHandle) startGated(ctx context.Context) (<-chan container.WaitResponse, <-chan error, error) {
	cli, err := h.d.client()
	if err != nil {
		return nil, nil, err
	}
	exitC, errC := cli.ContainerWait(ctx, h.containerID, container.WaitConditionNextExit)
	if err := cli.ContainerStart(ctx, h.containerID, container.StartOptions{}); err != nil {
		return nil, nil, fmt.Errorf("starting container: %w", err)
	}
	h.killedByUs.Store(false)
	h.fenced.Store(false)
	if h.state.StdoutPath != "" && h.state.StderrPath != "" {
		h.mu.Lock()
		old := h.logger
		h.mu.Unlock()
		if old == nil || old.waitExit(0) {
			lp, err := h.d.startLogger(&h.state)
			if err != nil {
				h.d.logger.Warn("gated app: log follower not started", "task_id", h.taskID, "error", err)
			} else {
				h.mu.Lock()
				h.logger = lp
				h.mu.Unlock()
			}
		}
	}
	return exitC, errC, nil
}

// stopGated stops a running gated container within the stop budget:
// SIGTERM, stopGrace, SIGKILL, and waits for the exit it caused.
func (h *taskHandle) stopGated(ctx context.Context, exitC <-chan container.WaitResponse, errC <-chan error) error {
	return h.kill(ctx, killRequest{signal: "SIGTERM", exited: exitOf(ctx, exitC), grace: stopGrace,
		failed: errC, killWait: 10 * time.Second, what: "gated app"})
}

// containerRunning asks the engine; an error counts as running so that a
// stop goes through the careful path.
func (h *taskHandle) containerRunning(ctx context.Context) bool {
	cli, err := h.d.client()
	if err != nil {
		return true
	}
	info, err := cli.ContainerInspect(ctx, h.containerID)
	if err != nil {
		return !cerrdefs.IsNotFound(err)
	}
	return info.State != nil && info.State.Running
}
