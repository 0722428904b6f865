package driver

import (
	"context"
	"errors"
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
	gate.Report(running)
	started := time.Now()
	var exitC <-chan container.WaitResponse
	var errC <-chan error
	if running {
		exitC, errC = h.waitExit(ctx, container.WaitConditionNotRunning)
	}
	lastReason := ""
	for {
		st := gate.Status(time.Now())
		// A recovered master keeps running until the gate has had one
		// silence period to reconnect: a plugin restart must not cost the
		// app. A deadline that passed meanwhile closes it at the first line.
		grace := running && st.ReceivedAt.IsZero() && time.Since(started) < announce.DefaultSilence
		switch {
		case st.Open && !running:
			var err error
			exitC, errC, err = h.startGated(ctx)
			if err != nil {
				h.d.emit(h, "Could not start the app as master: %v", err)
				h.setExit(&plugin.ExitResult{ExitCode: -1, Err: err})
				return
			}
			running = true
			gate.Report(true)
			h.d.emit(h, "Elected master (term %d): app started", st.State.Term)
		case !st.Open && running && !grace:
			if err := h.stopGated(ctx, exitC, errC); err != nil {
				h.d.logger.Error("stopping the gated app failed", "task_id", h.taskID, "error", err)
			}
			running, exitC, errC = false, nil, nil
			gate.Report(false)
			h.d.emit(h, "App stopped: %s", st.Reason)
		}
		if !running && st.Reason != lastReason && st.Reason != "" {
			lastReason = st.Reason
			if msg := st.State.Message; msg != "" {
				h.d.emit(h, "%s", msg)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-gate.Updates():
		case <-time.After(gatePoll):
		case <-exitC:
			if h.fenced.Load() {
				// Stopped by the driver because its syncer died (fence.go):
				// a closed gate, not the task's end.
				running, exitC, errC = false, nil, nil
				gate.Report(false)
				h.d.emit(h, "App stopped: the syncer exited")
				continue
			}
			// The app ended by itself while master: that is the task's exit.
			gate.Report(false)
			h.recordExit(ctx)
			return
		case err := <-errC:
			if ctx.Err() != nil {
				return
			}
			if cerrdefs.IsNotFound(err) {
				h.setExit(&plugin.ExitResult{ExitCode: -1, Err: fmt.Errorf("container %s was removed outside of Nomad", shortID(h.containerID))})
				return
			}
			// The engine hiccuped: ask again for the running container.
			exitC, errC = h.waitExit(ctx, container.WaitConditionNotRunning)
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
	cli, err := h.d.client()
	if err != nil {
		return err
	}
	h.killedByUs.Store(true)
	if err := cli.ContainerKill(ctx, h.containerID, "SIGTERM"); err != nil && !isGoneOrStopped(err) {
		return fmt.Errorf("sending SIGTERM: %w", err)
	}
	select {
	case <-exitC:
		return nil
	case <-time.After(stopGrace):
	case <-ctx.Done():
		return fmt.Errorf("stopping gated app: %w", ctx.Err())
	}
	if err := cli.ContainerKill(ctx, h.containerID, "SIGKILL"); err != nil && !isGoneOrStopped(err) {
		return fmt.Errorf("sending SIGKILL: %w", err)
	}
	select {
	case <-exitC:
		return nil
	case err := <-errC:
		return fmt.Errorf("waiting for the gated app: %w", err)
	case <-time.After(10 * time.Second):
		return errors.New("gated app did not stop after SIGKILL")
	case <-ctx.Done():
		return fmt.Errorf("stopping gated app: %w", ctx.Err())
	}
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
