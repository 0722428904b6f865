package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// handleVersion is TaskHandle.Version for driver_state written by this
// code; Nomad reserves 0.
const handleVersion = 1

// driverState is what Nomad stores for us in the task handle. After a
// client agent restart the handle's task config has no driver config, so
// everything needed to re-attach (container, log follower, stats inputs)
// is here. JSON keeps it readable in `nomad` debugging output.
type driverState struct {
	ContainerID   string `json:"container_id"`
	ContainerName string `json:"container_name"`
	Image         string `json:"image"`
	ImageID       string `json:"image_id"`
	// Pulled marks an image bedrock pulled itself (image GC candidates).
	Pulled     bool      `json:"pulled,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	TaskName   string    `json:"task_name"`
	AllocID    string    `json:"alloc_id"`
	AllocDir   string    `json:"alloc_dir"`
	StdoutPath string    `json:"stdout_path"`
	StderrPath string    `json:"stderr_path"`
	TTY        bool      `json:"tty,omitempty"`
	// LoggerPID is the detached log follower; LoggerState its position
	// file (last timestamp written per stream), which bounds duplicates
	// when a follower is restarted.
	LoggerPID   int    `json:"logger_pid"`
	LoggerState string `json:"logger_state"`
	// CPUShares and PercentTicks let TaskStats convert percent to ticks
	// as Nomad does, without the task config.
	CPUShares    int64            `json:"cpu_shares"`
	PercentTicks float64          `json:"percent_ticks"`
	PortMap      map[string]int32 `json:"port_map,omitempty"`
	NetworkIP    string           `json:"network_ip,omitempty"`
	// Gated marks an app task whose container runs only while the local
	// syncer announces master (see gate.go).
	Gated bool `json:"gated,omitempty"`
	// Syncer marks the syncer task: when its container dies, the driver
	// stops the gated apps and releases the lock it held (fence.go).
	Syncer bool `json:"syncer,omitempty"`
	// Capture marks a syncer in a capture mode: destroying it unmounts
	// what is stacked on the allocation's data dir (capturemount.go).
	Capture bool `json:"capture,omitempty"`
	// running is set by RecoverTask for a gated container found running.
	running bool
}

func (s *driverState) encode() ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encoding driver state: %w", err)
	}
	return b, nil
}

func decodeDriverState(b []byte) (*driverState, error) {
	var s driverState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding driver state: %w", err)
	}
	if s.ContainerID == "" {
		return nil, errors.New("driver state has no container id")
	}
	return &s, nil
}

// taskHandle is one task the driver tracks: its container, its log
// follower, and its exit once known.
type taskHandle struct {
	d        *Driver
	taskID   string
	allocID  string
	taskName string

	containerID string
	state       driverState
	logger      *loggerProc

	// killedByUs is set when the driver sends SIGKILL itself, so an exit
	// with 137 is not mistaken for a possible OOM kill.
	killedByUs atomic.Bool
	// fenced is set when the driver stops a gated app because its syncer
	// died; the exit it causes closes the gate instead of ending the task.
	fenced atomic.Bool

	mu          sync.Mutex
	exited      chan struct{}
	result      *plugin.ExitResult
	completedAt time.Time

	cancel context.CancelFunc
}

// newTaskHandle tracks a started or recovered container. The log
// follower is set before watching starts, so an exit waits for it to drain.
func newTaskHandle(d *Driver, taskID string, st driverState, lp *loggerProc) *taskHandle {
	ctx, cancel := context.WithCancel(d.ctx)
	h := &taskHandle{
		d:           d,
		taskID:      taskID,
		allocID:     st.AllocID,
		taskName:    st.TaskName,
		containerID: st.ContainerID,
		state:       st,
		logger:      lp,
		exited:      make(chan struct{}),
		cancel:      cancel,
	}
	if st.Gated {
		go h.runGated(ctx, st.running)
	} else {
		go h.watch(ctx)
	}
	if st.Syncer {
		if period := d.settings().syncerWatchdog; period > 0 {
			go h.syncerWatchdog(ctx, period)
		}
	}
	return h
}

func (h *taskHandle) exitResult() (*plugin.ExitResult, time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.result, h.completedAt, h.result != nil
}

func (h *taskHandle) setExit(r *plugin.ExitResult) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.result != nil {
		return
	}
	h.result = r
	h.completedAt = time.Now()
	close(h.exited)
}

// watch waits for the container to stop and records how it ended. Engine
// errors (dockerd restarting) are retried; a container removed behind our
// back ends the task with an error result.
func (h *taskHandle) watch(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for {
		cli, err := h.d.client()
		if err != nil {
			h.setExit(&plugin.ExitResult{ExitCode: -1, Err: err})
			return
		}
		waitC, errC := cli.ContainerWait(ctx, h.containerID, container.WaitConditionNotRunning)
		select {
		case <-ctx.Done():
			return
		case <-waitC:
			if h.state.Syncer {
				// Not on the handle's context: Nomad destroys the exited task's handle at once
				// (DestroyTask cancels it), while the release must still prove the app stopped
				// and free the lock. The plugin's context and fenceTimeout bound it instead.
				go h.d.releaseAfterSyncer(h.d.ctx, h) //nolint:contextcheck // outlives the handle on purpose
			}
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
			h.d.logger.Warn("waiting for container failed, retrying", "task_id", h.taskID, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// recordExit inspects the stopped container. A process killed by signal N
// exits with 128+N in Docker's report; we report that code and also set
// Signal = N (an app that deliberately exits with a code above 128 is
// indistinguishable, as with Nomad's docker driver).
func (h *taskHandle) recordExit(ctx context.Context) {
	res := &plugin.ExitResult{}
	cli, err := h.d.client()
	if err == nil {
		var info container.InspectResponse
		for i := 0; i < 5; i++ {
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			info, err = cli.ContainerInspect(ictx, h.containerID)
			cancel()
			if err == nil || cerrdefs.IsNotFound(err) || ctx.Err() != nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err == nil && info.State != nil && info.State.ExitCode == 137 && !info.State.OOMKilled && !h.killedByUs.Load() &&
			!h.engineDeliveredKill(ctx, info.State.StartedAt) {
			// The engine may handle the kernel's OOM event after the exit
			// event (seen with 20.10 under load, later than 1.5 s): give it
			// up to 5 s to flag the container before reporting a plain
			// SIGKILL. Nothing waits on this but Nomad's view of the exit:
			// a gated app's failure and a syncer's release are told first.
			for i := 0; i < 50 && ctx.Err() == nil; i++ {
				time.Sleep(100 * time.Millisecond)
				ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
				again, ierr := cli.ContainerInspect(ictx, h.containerID)
				cancel()
				if ierr != nil || again.State == nil {
					break
				}
				if again.State.OOMKilled {
					info = again
					break
				}
			}
		}
		if err == nil && info.State != nil {
			res.ExitCode = info.State.ExitCode
			res.OOMKilled = info.State.OOMKilled
			if res.ExitCode > 128 && res.ExitCode <= 128+64 {
				res.Signal = res.ExitCode - 128
			}
		}
	}
	if err != nil {
		res.ExitCode = -1
		res.Err = fmt.Errorf("inspecting exited container %s: %w", shortID(h.containerID), err)
	}
	// Let the log follower drain the last lines before Nomad learns of the
	// exit (it may stop collecting soon after).
	if h.logger != nil {
		h.logger.waitExit(3 * time.Second)
	}
	if res.OOMKilled {
		h.d.emit(h, "OOM killed: the task used more memory than its limit")
	}
	if h.state.Syncer && res.ExitCode > 0 && res.ExitCode < 128 {
		h.tellSyncerFailure(ctx, res.ExitCode)
	}
	h.setExit(res)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// engineDeliveredKill tells whether the engine itself sent the container a
// SIGKILL since it started (`docker kill`, an operator or a fault
// injector): such an exit is no OOM kill, so it is reported without the
// wait for a late OOM flag, which would delay a failover by up to 1.5 s.
// A SIGKILL from outside the engine (kill -9 of the pid, the OOM killer)
// leaves no such event and still gets the wait.
func (h *taskHandle) engineDeliveredKill(ctx context.Context, startedAt string) bool {
	cli, err := h.d.client()
	if err != nil {
		return false
	}
	since, err := time.Parse(time.RFC3339Nano, startedAt)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msgs, errs := cli.Events(ctx, events.ListOptions{
		Since:   fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		Until:   fmt.Sprintf("%d.%09d", time.Now().Unix(), time.Now().Nanosecond()),
		Filters: filters.NewArgs(filters.Arg("container", h.containerID), filters.Arg("event", "kill")),
	})
	for {
		select {
		case m := <-msgs:
			switch m.Actor.Attributes["signal"] {
			case "9", "KILL", "SIGKILL":
				return true
			}
		case err := <-errs:
			// io.EOF once the window is read: no SIGKILL from the engine
			_ = err
			return false
		case <-ctx.Done():
			return false
		}
	}
}
