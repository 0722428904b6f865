package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// StartTask creates and starts the task's container. Everything that can be
// checked without the engine (config types, port labels, privileges,
// resources) is checked before the image is pulled or anything created;
// a failure after creation removes the container again.
func (d *Driver) StartTask(ctx context.Context, cfg *plugin.TaskConfig) (*plugin.TaskHandle, *plugin.NetworkOverride, error) {
	if d.handle(cfg.ID) != nil {
		return nil, nil, fmt.Errorf("task %s is already started", cfg.ID)
	}
	tc, kind, err := decodeTaskConfig(cfg.DriverConfig)
	if err != nil {
		return nil, nil, err
	}
	if err := d.checkPlacement(ctx, cfg); err != nil {
		return nil, nil, err
	}
	if kind == kindSyncer {
		if tc, err = d.syncerContainer(ctx, cfg, tc); err != nil {
			return nil, nil, err
		}
	}
	s := d.settings()
	ref, err := normalizeImage(tc.Image)
	if err != nil {
		return nil, nil, err
	}
	spec, err := buildContainer(s, cfg, tc, ref)
	if err != nil {
		return nil, nil, err
	}
	cli, err := d.client()
	if err != nil {
		return nil, nil, plugin.NewRecoverableError(err)
	}

	// A handle-less stand-in so image events reach the task before it runs.
	evh := &taskHandle{taskID: cfg.ID, allocID: cfg.AllocID, taskName: cfg.Name}
	ref, imageID, pulled, err := d.ensureImage(ctx, evh, tc)
	if err != nil {
		return nil, nil, err
	}
	spec.config.Image = ref

	if err := d.removeStale(ctx, spec.name); err != nil {
		return nil, nil, plugin.NewRecoverableError(err)
	}
	capture := kind == kindSyncer && tc.Syncer.capture()
	if capture {
		// After removeStale: an earlier attempt's syncer has exited, so a
		// FUSE mount it left is dead and can be detached.
		if err := prepareCaptureMount(cfg.AllocDir, cfg.Name); err != nil {
			err = fmt.Errorf("syncer.mode %q: preparing the data dir's mount point: %w", tc.Syncer.Mode, err)
			if errors.Is(err, unix.EPERM) {
				return nil, nil, plugin.NewFatalError(fmt.Errorf("%w (the plugin must run as root for a capture mode)", err))
			}
			return nil, nil, plugin.NewRecoverableError(err)
		}
	}
	started := false
	defer func() {
		if capture && !started {
			d.releaseCapture(cfg.AllocDir)
		}
	}()
	created, err := cli.ContainerCreate(ctx, spec.config, spec.host, spec.network, nil, spec.name)
	if err != nil {
		if cerrdefs.IsInvalidArgument(err) {
			return nil, nil, plugin.NewFatalError(fmt.Errorf("creating container: %w", err))
		}
		return nil, nil, plugin.NewRecoverableError(fmt.Errorf("creating container: %w", err))
	}
	cleanup := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = cli.ContainerRemove(rctx, created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	}

	st := driverState{
		ContainerID:   created.ID,
		ContainerName: spec.name,
		Image:         ref,
		ImageID:       imageID,
		Pulled:        pulled,
		TaskName:      cfg.Name,
		AllocID:       cfg.AllocID,
		AllocDir:      cfg.AllocDir,
		StdoutPath:    cfg.StdoutPath,
		StderrPath:    cfg.StderrPath,
		TTY:           tc.TTY,
		PortMap:       spec.portMap,
		LoggerState:   loggerStatePath(cfg.AllocDir, cfg.Name, created.ID),
	}
	if r := cfg.Resources; r != nil {
		st.CPUShares, st.PercentTicks = r.Linux.CPUShares, r.Linux.PercentTicks
		if st.CPUShares == 0 {
			st.CPUShares = r.CPUShares
		}
	}
	// In an allocation with a syncer the container waits for the gate
	// (gate.go); otherwise it starts now.
	st.Gated = kind != kindSyncer && isGated(cfg.AllocDir)
	st.Syncer = kind == kindSyncer
	st.Capture = capture
	if !st.Gated {
		if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
			cleanup()
			return nil, nil, classifyStartError(err)
		}
	}
	st.StartedAt = time.Now()
	if info, err := cli.ContainerInspect(ctx, created.ID); err == nil {
		if t, perr := time.Parse(time.RFC3339Nano, info.State.StartedAt); perr == nil {
			st.StartedAt = t
		}
		if info.NetworkSettings != nil {
			if n := info.NetworkSettings.Networks[string(spec.host.NetworkMode)]; n != nil {
				st.NetworkIP = n.IPAddress
			}
		}
	}
	// The follower starts after the container: with since unset it reads
	// the log from its beginning, so early lines are not lost.
	var lp *loggerProc
	if !st.Gated && cfg.StdoutPath != "" && cfg.StderrPath != "" {
		if lp, err = d.startLogger(&st); err != nil {
			cleanup()
			return nil, nil, plugin.NewRecoverableError(err)
		}
		st.LoggerPID = lp.pid
	}
	state, err := st.encode()
	if err != nil {
		lp.stop(0)
		cleanup()
		return nil, nil, err
	}
	h := newTaskHandle(d, cfg.ID, st, lp) //nolint:contextcheck // the task outlives this RPC: it hangs off the plugin's context
	started = true
	d.storeHandle(h)
	d.images.acquire(ref)
	d.reconcile.sawNode(nodeLabel(cfg))
	if st.Gated {
		d.emit(h, "Created container %s; it runs while this instance is master", shortID(created.ID))
	} else {
		d.emit(h, "Started container %s", shortID(created.ID))
	}
	d.logger.Info("started task", "task_id", cfg.ID, "container", shortID(created.ID), "image", ref)

	return &plugin.TaskHandle{
		Version:     handleVersion,
		Config:      cfg,
		State:       plugin.TaskStateRunning,
		DriverState: state,
	}, networkOverride(&st), nil
}

func networkOverride(st *driverState) *plugin.NetworkOverride {
	if len(st.PortMap) == 0 {
		return nil
	}
	return &plugin.NetworkOverride{PortMap: st.PortMap, Addr: st.NetworkIP, AutoAdvertise: false}
}

func classifyStartError(err error) error {
	msg := err.Error()
	if cerrdefs.IsInvalidArgument(err) || strings.Contains(msg, "executable file not found") ||
		strings.Contains(msg, "no such file or directory") || strings.Contains(msg, "permission denied") {
		return plugin.NewFatalError(fmt.Errorf("starting container: %w", err))
	}
	return plugin.NewRecoverableError(fmt.Errorf("starting container: %w", err))
}

// removeStale removes a container with our name left by an earlier attempt
// of the same task: one whose plugin was lost (labelled ours, untracked),
// or an exited attempt Nomad restarts without destroying first. A running
// tracked container is never touched.
func (d *Driver) removeStale(ctx context.Context, name string) error {
	cli, err := d.client()
	if err != nil {
		return err
	}
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("name", "^/"+name+"$"), filters.Arg("label", labelManaged+"=true"))})
	if err != nil {
		return fmt.Errorf("listing containers: %w", err)
	}
	for _, c := range list {
		if owner := d.handleOfContainer(c.ID); owner != nil {
			if _, _, done := owner.exitResult(); !done {
				return fmt.Errorf("container %s still runs task %s", name, owner.taskID)
			}
			owner.logger.stop(time.Second)
			owner.cancel()
			d.removeHandle(owner.taskID)
			d.images.release(owner.state.Image, owner.state.Pulled) //nolint:contextcheck // removal is delayed past this RPC
		}
		d.logger.Info("removing the container of an earlier attempt", "container", shortID(c.ID), "name", name)
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("removing stale container %s: %w", name, err)
		}
	}
	return nil
}

// WaitTask delivers the task's exit once known.
func (d *Driver) WaitTask(ctx context.Context, taskID string) (<-chan *plugin.ExitResult, error) {
	h, err := d.mustHandle(taskID)
	if err != nil {
		return nil, err
	}
	ch := make(chan *plugin.ExitResult, 1)
	go func() {
		defer close(ch)
		select {
		case <-h.exited:
			r, _, _ := h.exitResult()
			ch <- r
		case <-ctx.Done():
		}
	}()
	return ch, nil
}

// StopTask sends the kill signal (the job's kill_signal, default SIGTERM),
// waits up to timeout, then SIGKILLs. It returns once the container has
// stopped. Unknown tasks are already stopped.
func (d *Driver) StopTask(ctx context.Context, taskID string, timeout time.Duration, signal string) error {
	h := d.handle(taskID)
	if h == nil {
		return nil
	}
	if _, _, done := h.exitResult(); done {
		return nil
	}
	if h.state.Gated && !h.containerRunning(ctx) {
		// A clone's app: nothing runs, so stopping is ending the gate.
		h.cancel()
		h.setExit(&plugin.ExitResult{})
		return nil
	}
	if signal == "" {
		signal = "SIGTERM"
	}
	if _, err := parseSignal(signal); err != nil {
		return plugin.NewFatalError(err)
	}
	err := h.kill(ctx, killRequest{signal: signal, exited: h.exited, grace: timeout, killWait: 30 * time.Second, what: "task", tell: true})
	if err != nil && ctx.Err() == nil {
		return plugin.NewRecoverableError(err)
	}
	return err
}

// DestroyTask removes the container (killing it when force is set) and
// forgets the task. Unknown tasks are already destroyed.
func (d *Driver) DestroyTask(ctx context.Context, taskID string, force bool) error {
	h := d.handle(taskID)
	if h == nil {
		return nil
	}
	if _, _, done := h.exitResult(); !done && !force {
		return fmt.Errorf("task %s is still running; stop it first or destroy with force", taskID)
	}
	cli, err := d.client()
	if err != nil {
		return plugin.NewRecoverableError(err)
	}
	switch {
	case h.containerID == "":
		// A lost task (see lostHandle): nothing to remove.
		h.killedByUs.Store(true)
	case d.settings().gcContainer:
		// The forced removal kills the container: its exit is ours.
		h.killedByUs.Store(true)
		if err := cli.ContainerRemove(ctx, h.containerID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return plugin.NewRecoverableError(fmt.Errorf("removing container %s: %w", shortID(h.containerID), err))
		}
	default:
		if err := h.kill(ctx, killRequest{}); err != nil {
			return plugin.NewRecoverableError(fmt.Errorf("killing container %s: %w", shortID(h.containerID), err))
		}
	}
	if h.state.Capture {
		d.releaseCapture(h.state.AllocDir)
	}
	h.logger.stop(2 * time.Second)
	h.cancel()
	h.setExit(&plugin.ExitResult{ExitCode: -1, Err: errors.New("task destroyed")})
	d.removeHandle(taskID)
	d.images.release(h.state.Image, h.state.Pulled) //nolint:contextcheck // removal is delayed past this RPC
	return nil
}

// InspectTask reports the task's state.
func (d *Driver) InspectTask(_ context.Context, taskID string) (*plugin.TaskStatus, error) {
	h, err := d.mustHandle(taskID)
	if err != nil {
		return nil, err
	}
	st := &plugin.TaskStatus{
		ID:        taskID,
		Name:      h.taskName,
		State:     plugin.TaskStateRunning,
		StartedAt: h.state.StartedAt,
		Attributes: map[string]string{
			"container_id":   h.containerID,
			"container_name": h.state.ContainerName,
			"image":          h.state.Image,
		},
		Network: networkOverride(&h.state),
	}
	if r, at, done := h.exitResult(); done {
		st.State, st.Result, st.CompletedAt = plugin.TaskStateExited, r, at
	}
	return st, nil
}

// SignalTask delivers a signal to the container's main process.
func (d *Driver) SignalTask(ctx context.Context, taskID string, signal string) error {
	h, err := d.mustHandle(taskID)
	if err != nil {
		return err
	}
	if _, err := parseSignal(signal); err != nil {
		return plugin.NewFatalError(err)
	}
	if err := h.kill(ctx, killRequest{signal: signal, strict: true}); err != nil {
		return fmt.Errorf("signalling task: %w", err)
	}
	return nil
}
