package driver

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// killRequest says how kill ends (or only signals) a task's container. Every way the driver
// stops a container goes through kill — StopTask, SignalTask, DestroyTask, the gate, the fence
// after a dead syncer and the syncer watchdog — so that the bookkeeping that tells an exit the
// driver caused from one the app suffered (killedByUs, fenced) is written once.
type killRequest struct {
	// signal is sent first ("" means SIGKILL).
	signal string
	// exited, when set, reports the exit the kill causes: kill waits up to grace for it, then
	// sends SIGKILL and waits up to killWait. Without it kill sends signal and returns.
	exited <-chan struct{}
	grace  time.Duration
	// failed, when set, reports a failure to follow the container while kill waits after the
	// SIGKILL.
	failed <-chan error
	// killWait bounds the wait for the exit after SIGKILL.
	killWait time.Duration
	// what names the container in errors ("task", "gated app").
	what string
	// tell says the SIGKILL after an ignored signal as a task event (a stop the user asked for).
	tell bool
	// fence marks the kill as the fence after a dead syncer: the exit it causes closes the
	// gate instead of ending the task (fence.go).
	fence bool
	// strict reports a container that is already gone or stopped as an error (SignalTask:
	// the user asked for a signal that nothing received).
	strict bool
}

// kill sends the request's signal to the container and, when asked, waits for the exit and
// escalates to SIGKILL after the grace — the TERM → grace → KILL of Nomad's docker driver.
// It records a SIGKILL it sends (killedByUs) before sending it, so that the exit code 137 it
// causes is not mistaken for an OOM kill. A container that is already gone or stopped has
// nothing left to signal and is no error unless the request is strict.
func (h *taskHandle) kill(ctx context.Context, r killRequest) error {
	cli, err := h.d.client()
	if err != nil {
		return err
	}
	signal := r.signal
	if signal == "" {
		signal = "SIGKILL"
	}
	send := func(signal string) error {
		if n, _ := parseSignal(signal); n == int(syscall.SIGKILL) {
			h.killedByUs.Store(true)
		}
		err := cli.ContainerKill(ctx, h.containerID, signal)
		if err != nil && (r.strict || !isGoneOrStopped(err)) {
			return fmt.Errorf("sending %s: %w", signal, err)
		}
		return nil
	}
	if r.fence {
		h.fenced.Store(true)
	}
	if err := send(signal); err != nil || r.exited == nil {
		return err
	}
	select {
	case <-r.exited:
		return nil
	case <-time.After(r.grace):
	case <-ctx.Done():
		return fmt.Errorf("stopping %s: %w", r.what, ctx.Err())
	}
	if r.tell {
		h.d.emit(h, "Container did not stop within %s of %s; sending SIGKILL", r.grace, signal)
	}
	if err := send("SIGKILL"); err != nil {
		return err
	}
	select {
	case <-r.exited:
		return nil
	case err := <-r.failed:
		return fmt.Errorf("waiting for the %s: %w", r.what, err)
	case <-time.After(r.killWait):
		return fmt.Errorf("%s did not stop after SIGKILL", r.what)
	case <-ctx.Done():
		return fmt.Errorf("stopping %s: %w", r.what, ctx.Err())
	}
}

// isGoneOrStopped is true for kill errors that mean there is nothing to
// signal any more.
func isGoneOrStopped(err error) bool {
	return cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) || strings.Contains(err.Error(), "is not running")
}

// exitOf adapts a container wait to kill's exited channel: it closes when the container
// exits (or ctx ends).
func exitOf(ctx context.Context, exitC <-chan container.WaitResponse) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		select {
		case <-exitC:
			close(done)
		case <-ctx.Done():
		}
	}()
	return done
}
