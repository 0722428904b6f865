package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// RecoverTask re-attaches to a task's container from driver_state alone
// (the handle's driver config is empty after an agent restart). The
// container is never restarted: a running one is watched again, an exited
// one reports its exit. The log follower is adopted if it still runs,
// otherwise a new one resumes from the recorded position.
//
// A task whose container cannot be found (removed while the plugin was
// down, or an id the engine never had) is recovered as already exited with
// an error result: RecoverTask succeeds, as Nomad expects for unknown ids,
// and WaitTask then reports the loss so the restart policy applies.
func (d *Driver) RecoverTask(ctx context.Context, handle *plugin.TaskHandle) error {
	if handle == nil || handle.Config == nil {
		return plugin.NewFatalError(errors.New("recover: no task handle"))
	}
	taskID := handle.Config.ID
	if d.handle(taskID) != nil {
		return nil // already tracked (agent re-attached to a live plugin)
	}
	cli, err := d.client()
	if err != nil {
		return plugin.NewRecoverableError(err)
	}
	st, err := decodeDriverState(handle.DriverState)
	if err == nil && handle.Version != handleVersion {
		err = fmt.Errorf("task handle version %d is not this driver's (%d)", handle.Version, handleVersion)
	}
	if err != nil {
		// Unreadable state: the container can still be found by the task
		// id label it was created with.
		found, ferr := d.stateFromLabels(ctx, handle.Config)
		if ferr != nil {
			d.storeHandle(lostHandle(d, handle.Config, fmt.Errorf("recover: %w; and by label: %w", err, ferr)))
			return nil
		}
		st = found
	}
	info, err := cli.ContainerInspect(ctx, st.ContainerID)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			d.storeHandle(lostHandle(d, handle.Config, fmt.Errorf("container %s of task %s no longer exists", shortID(st.ContainerID), taskID)))
			return nil
		}
		return plugin.NewRecoverableError(fmt.Errorf("recover: inspecting container %s: %w", shortID(st.ContainerID), err))
	}
	// The config may carry paths the state lacks (older states); prefer the
	// state, which was written at start.
	if st.StdoutPath == "" {
		st.StdoutPath, st.StderrPath = handle.Config.StdoutPath, handle.Config.StderrPath
	}
	if st.AllocDir == "" {
		st.AllocDir = handle.Config.AllocDir
	}
	if st.LoggerState == "" && st.AllocDir != "" {
		st.LoggerState = loggerStatePath(st.AllocDir, st.TaskName, st.ContainerID)
	}
	lp := adoptLogger(st.LoggerPID, st.ContainerID)
	if lp == nil && st.StdoutPath != "" && st.StderrPath != "" {
		// A new follower resumes from the position file; if the container
		// has stopped it drains what is left and exits.
		if lp, err = d.startLogger(st); err != nil {
			d.logger.Warn("recover: log follower not restarted", "task_id", taskID, "error", err)
		} else {
			st.LoggerPID = lp.pid
		}
	}
	st.running = info.State != nil && info.State.Running
	h := newTaskHandle(d, taskID, *st, lp) //nolint:contextcheck // the task outlives this RPC: it hangs off the plugin's context
	d.storeHandle(h)
	d.images.acquire(st.Image)
	d.reconcile.sawNode(nodeLabel(handle.Config))
	if info.Config != nil {
		d.reconcile.sawNode(info.Config.Labels[labelNode])
	}
	d.logger.Info("recovered task", "task_id", taskID, "container", shortID(st.ContainerID),
		"running", info.State != nil && info.State.Running, "logger_adopted", st.LoggerPID > 0)
	return nil
}

// lostHandle tracks a task that has nothing left to re-attach to: it is
// already exited, with why as its error.
func lostHandle(d *Driver, cfg *plugin.TaskConfig, why error) *taskHandle {
	d.logger.Warn("recover: task has no container; reporting it exited", "task_id", cfg.ID, "error", why)
	h := &taskHandle{
		d: d, taskID: cfg.ID, allocID: cfg.AllocID, taskName: cfg.Name,
		state:  driverState{TaskName: cfg.Name, AllocID: cfg.AllocID},
		exited: make(chan struct{}), cancel: func() {},
	}
	h.setExit(&plugin.ExitResult{ExitCode: -1, Err: why})
	return h
}

// reconciler finds containers labelled by bedrock that no task owns, e.g.
// after a plugin was lost between creating a container and reporting it,
// or a client lost its state. Policy: Nomad calls RecoverTask for every
// task it knows right after a plugin (re)start, so a container is only an
// orphan if it was untracked on two consecutive passes, older than
// creation_grace, and labelled with a node this plugin serves (learned
// from its tasks; several clients may share one engine, so containers of
// other nodes are never touched, and with no node known nothing is).
type reconciler struct {
	d          *Driver
	mu         sync.Mutex
	nodes      map[string]bool
	candidates map[string]bool
}

func newReconciler(d *Driver) *reconciler {
	return &reconciler{d: d, nodes: map[string]bool{}, candidates: map[string]bool{}}
}

func (r *reconciler) sawNode(node string) {
	if node == "" {
		return
	}
	r.mu.Lock()
	r.nodes[node] = true
	r.mu.Unlock()
}

func (r *reconciler) run(ctx context.Context) {
	for {
		s := r.d.settings()
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.danglingPeriod):
		}
		r.d.reapDeadCaptureMounts()
		if !s.danglingEnabled {
			continue
		}
		if err := r.pass(ctx, s.danglingGrace); err != nil && ctx.Err() == nil {
			r.d.logger.Debug("dangling container check failed", "error", err)
		}
	}
}

// pass runs one reconciliation round and returns the ids it removed.
func (r *reconciler) pass(ctx context.Context, grace time.Duration) error {
	cli, err := r.d.client()
	if err != nil {
		return err
	}
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", labelManaged+"=true"))})
	if err != nil {
		return fmt.Errorf("listing containers: %w", err)
	}
	known := r.d.knownContainers()
	r.mu.Lock()
	nodes := make(map[string]bool, len(r.nodes))
	for n := range r.nodes {
		nodes[n] = true
	}
	prev := r.candidates
	r.mu.Unlock()
	next := map[string]bool{}
	for _, c := range list {
		if known[c.ID] || !nodes[c.Labels[labelNode]] {
			continue
		}
		if time.Since(time.Unix(c.Created, 0)) < grace {
			continue
		}
		if !prev[c.ID] {
			next[c.ID] = true
			continue
		}
		r.d.logger.Info("removing dangling container no task owns", "container", shortID(c.ID),
			"task_id", c.Labels[labelTaskID], "alloc_id", c.Labels[labelAllocID])
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			r.d.logger.Warn("removing dangling container failed", "container", shortID(c.ID), "error", err)
			next[c.ID] = true
			continue
		}
		if dir := captureAllocDir(c); dir != "" {
			r.d.releaseCapture(dir)
		}
	}
	r.mu.Lock()
	r.candidates = next
	r.mu.Unlock()
	return nil
}

// stateFromLabels rebuilds a task's driver state from its labelled
// container and the handle's task config.
func (d *Driver) stateFromLabels(ctx context.Context, cfg *plugin.TaskConfig) (*driverState, error) {
	cli, err := d.client()
	if err != nil {
		return nil, err
	}
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", labelTaskID+"="+cfg.ID))})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	if len(list) != 1 {
		return nil, fmt.Errorf("%d containers carry %s=%s", len(list), labelTaskID, cfg.ID)
	}
	c := list[0]
	name := ""
	if len(c.Names) > 0 {
		name = strings.TrimPrefix(c.Names[0], "/")
	}
	return &driverState{
		ContainerID: c.ID, ContainerName: name, Image: c.Image, ImageID: c.ImageID,
		StartedAt: time.Unix(c.Created, 0), TaskName: cfg.Name, AllocID: cfg.AllocID, AllocDir: cfg.AllocDir,
		StdoutPath: cfg.StdoutPath, StderrPath: cfg.StderrPath,
		LoggerState: loggerStatePath(cfg.AllocDir, cfg.Name, c.ID),
		Capture:     c.Labels[labelCapture] != "",
	}, nil
}
