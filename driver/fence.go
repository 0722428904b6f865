package driver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// When a syncer container dies without stepping down (SIGKILL, a crash, the
// OOM killer), its Consul session outlives it until the TTL runs out and
// then blocks the lock for the lock-delay: seconds without a master. The
// driver sees the death at once and is the one party that can prove the
// dead syncer's mastership is over: the container has exited (the kernel
// says so), and the app containers it gated are stopped (the engine says
// so). With both proven it releases the lock for the dead session, which
// lets the most caught-up clone take over within milliseconds, without the
// lock-delay — the delay protects a holder that may still act, and there is
// none. Without the proof (an app that will not stop, Consul unreachable)
// nothing is released and the TTL path applies as before.

// fenceTimeout bounds the whole fence-and-release; the TTL path takes over
// after it.
const fenceTimeout = 10 * time.Second

// releaseAfterSyncer runs when the syncer task's container stopped.
func (d *Driver) releaseAfterSyncer(ctx context.Context, syncer *taskHandle) {
	ctx, cancel := context.WithTimeout(ctx, fenceTimeout)
	defer cancel()
	allocDir := syncer.state.AllocDir
	if allocDir == "" || !boolOr(d.settings().consul.ReleaseDeadSyncer, true) {
		return
	}
	// Read the session first: a restarted syncer writes a new one, and only
	// the dead one's may be released.
	rec, err := lease.ReadSessionRecord(filepath.Join(allocDir, "alloc", "tmp", lease.SessionFileName))
	if err != nil {
		d.logger.Debug("no session to release after the syncer stopped", "alloc_id", syncer.allocID, "error", err)
		return
	}
	if err := d.stopGatedApps(ctx, allocDir); err != nil {
		d.logger.Error("the syncer died but its app could not be proven stopped: the lock is left to expire", "alloc_id", syncer.allocID, "error", err)
		return
	}
	client, err := d.consulClient()
	if err != nil {
		d.logger.Warn("the syncer died; Consul client unavailable: the lock is left to expire", "error", err)
		return
	}
	released, term, err := lease.ReleaseAbandoned(ctx, client, rec)
	if err != nil {
		d.logger.Warn("releasing the dead syncer's session failed: the lock is left to expire", "alloc_id", syncer.allocID, "error", err)
		return
	}
	if released {
		d.emit(syncer, "Syncer exited while master: app stopped and the lock of term %d released, a clone takes over", term)
		d.logger.Info("released the lock of a dead syncer", "alloc_id", syncer.allocID, "term", term)
	}
}

// stopGatedApps makes sure every gated app of the allocation is stopped:
// the gates close by themselves when the syncer's socket goes away, so it
// first waits briefly for that, then stops what still runs.
func (d *Driver) stopGatedApps(ctx context.Context, allocDir string) error {
	var apps []*taskHandle
	d.mu.RLock()
	for _, h := range d.tasks {
		if h.state.Gated && h.state.AllocDir == allocDir {
			apps = append(apps, h)
		}
	}
	d.mu.RUnlock()
	var errs []error
	for _, h := range apps {
		if err := h.fence(ctx); err != nil {
			errs = append(errs, fmt.Errorf("task %s: %w", h.taskName, err))
		}
	}
	return errors.Join(errs...)
}

// fence returns once the app's container is not running, killing it when
// the gate has not stopped it within stopGrace plus a margin.
func (h *taskHandle) fence(ctx context.Context) error {
	deadline := time.Now().Add(2 * stopGrace)
	for h.containerRunning(ctx) {
		if time.Now().After(deadline) {
			if err := h.kill(ctx, killRequest{fence: true}); err != nil {
				return fmt.Errorf("killing the app: %w", err)
			}
			deadline = time.Now().Add(fenceTimeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the app to stop: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// consulClient is a client of the node's Consul agent, as configured.
func (d *Driver) consulClient() (*api.Client, error) {
	s := d.settings()
	cfg := api.DefaultConfig()
	cfg.Address = s.consul.Address
	cfg.Token = s.consul.Token
	if s.consul.TLS != nil {
		cfg.Scheme = "https"
		cfg.TLSConfig = api.TLSConfig{CAFile: s.consul.TLS.CAFile, CertFile: s.consul.TLS.CertFile, KeyFile: s.consul.TLS.KeyFile}
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return c, nil
}

// syncerWatchdog kills the syncer's container when it has been silent on
// its role socket for period while it last announced master: a frozen or
// hung master syncer. Its app is already stopped by the gate after a second
// of silence; killing the syncer lets releaseAfterSyncer hand the lock on at
// once, where Consul would wait for the session's TTL (twice over, on 1.x
// servers) and then the lock-delay. Nomad's restart block brings a fresh
// syncer back, as a clone. A clone's silence blocks nobody and is left to
// Nomad.
func (h *taskHandle) syncerWatchdog(ctx context.Context, period time.Duration) {
	gate := announce.Follow(ctx, announce.SocketPath(h.state.AllocDir), announce.GateConfig{Logger: h.d.logger.Named("watchdog")})
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.exited:
			return
		case now := <-tick.C:
			st := gate.Status(now)
			if !st.Connected || st.ReceivedAt.IsZero() || st.State.Role != core.RoleMaster {
				continue
			}
			silent := now.Sub(st.ReceivedAt)
			if silent < period {
				continue
			}
			if err := h.kill(ctx, killRequest{}); err != nil {
				h.d.logger.Warn("watchdog: killing a silent syncer failed", "task_id", h.taskID, "error", err)
				continue
			}
			h.d.emit(h, "Syncer silent for %s while master (term %d): killed by the watchdog so a clone can take over", silent.Round(100*time.Millisecond), st.State.Term)
			h.d.logger.Warn("watchdog killed a silent master syncer", "task_id", h.taskID, "silent", silent, "term", st.State.Term)
			return
		}
	}
}
