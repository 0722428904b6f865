// Package election turns the Consul lease (syncer/lease) into the syncer's
// role and announces that role to the driver (syncer/announce).
//
// Ordering is the point of this package. On losing the lease the
// announcement "not master" goes out before anything else, so the driver
// stops the app while the old deadline still protects the handover. On
// winning, the syncer is switched to master first and the app is announced
// only once the syncer serves as master, i.e. after it applied everything it
// held. On a graceful stop the announcement goes out first, then the
// elector waits (bounded by the deadline) for the driver to report the app
// stopped, and only then releases the lock so a clone takes over at once.
package election

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// Local is the elector's view of the local syncer.
type Local interface {
	// Info is this instance's candidacy: id, address, position, caught-up.
	Info() lease.Info
	// Serving reports whether the syncer acts as master at term.
	Serving(term uint64) bool
}

// LagReporter is optionally implemented by Local: how many operations a
// clone's copy is behind its master's head as last heard, known once the
// initial sync is done. The elector announces it (announce.State.Lag).
type LagReporter interface {
	Lag() (lag uint64, known bool)
}

// Drainer is optionally implemented by Local: on a hand-over with the app stopped, the master
// passes its last changes to the clones before the lock goes (bounded by ctx), so the clone
// that takes over holds them.
type Drainer interface {
	Drain(ctx context.Context) error
}

// drainTimeout bounds Drainer.Drain on a hand-over: the app is stopped, every instant spent
// here is downtime, and what a clone did not get is kept in the old master's lost+found.
const drainTimeout = 2 * time.Second

// errAppFailed ends a mastership whose app ended by itself (see handOver).
var errAppFailed = errors.New("the app exited while master")

// Config configures an Elector.
type Config struct {
	Leaser    lease.Leaser
	Announcer *announce.Announcer
	Local     Local
	Logger    hclog.Logger
	// PromoteTimeout bounds the wait for the syncer to serve as master
	// after winning (default 10s); past it the lease is released.
	PromoteTimeout time.Duration
	// StepDown, if set, is called when this instance steps down, after the
	// announcement and before the lock is released (e.g. to take the master
	// tag off the service registration); ctx bounds it.
	StepDown func(ctx context.Context)
	// Refresh is how often the announced position, caught-up flag and lag
	// are refreshed between role changes (default 1s), for the driver's task
	// events and the service check.
	Refresh time.Duration
}

// stepDownTimeout bounds Config.StepDown, which runs while the app stops.
const stepDownTimeout = time.Second

// Elector runs the election for one instance.
type Elector struct {
	cfg   Config
	log   hclog.Logger
	roles chan core.Assignment
}

// New returns an Elector; call Run, and feed Roles to the syncer.
func New(cfg Config) (*Elector, error) {
	if cfg.Leaser == nil || cfg.Announcer == nil || cfg.Local == nil {
		return nil, errors.New("election: leaser, announcer and local syncer are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.PromoteTimeout <= 0 {
		cfg.PromoteTimeout = 10 * time.Second
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = time.Second
	}
	return &Elector{cfg: cfg, log: cfg.Logger, roles: make(chan core.Assignment, 1)}, nil
}

// Roles delivers role changes; a slow reader only sees the latest.
func (e *Elector) Roles() <-chan core.Assignment { return e.roles }

func (e *Elector) send(r core.Assignment) {
	for {
		select {
		case e.roles <- r:
			return
		default:
		}
		select {
		case <-e.roles:
		default:
		}
	}
}

func (e *Elector) announce(role core.Role, term uint64, deadline time.Time, masterAddr, msg string) {
	info := e.cfg.Local.Info()
	lag, _ := e.lag(info)
	e.cfg.Announcer.Set(announce.State{
		Role: role, Term: term, Deadline: deadline, MasterAddr: masterAddr, Message: msg,
		Position: info.Position,
		CaughtUp: info.CaughtUp, Lag: lag,
	})
}

// lag is the local copy's lag, when known and meaningful (caught up).
func (e *Elector) lag(info lease.Info) (uint64, bool) {
	lr, ok := e.cfg.Local.(LagReporter)
	if !ok || !info.CaughtUp {
		return 0, false
	}
	return lr.Lag()
}

// refresh keeps the announced position, caught-up flag and lag current
// between role changes. It changes nothing else, and nothing at all when a
// role change came between reading the local syncer and announcing.
func (e *Elector) refresh(ctx context.Context) {
	t := time.NewTicker(e.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.refreshWarning()
		before := e.cfg.Announcer.State()
		info := e.cfg.Local.Info()
		lag, _ := e.lag(info)
		pos := info.Position
		if before.Position == pos && before.CaughtUp == info.CaughtUp && before.Lag == lag {
			continue
		}
		e.cfg.Announcer.Update(func(s *announce.State) {
			if s.Role != before.Role || s.Term != before.Term || s.MasterAddr != before.MasterAddr || s.Message != before.Message {
				return // a newer announcement: it read the syncer itself
			}
			s.Position, s.CaughtUp, s.Lag = pos, info.CaughtUp, lag
			if info.CaughtUp && s.Progress != nil {
				s.Progress = nil
			}
		})
	}
}

// Run campaigns until ctx ends, following the master while not holding
// the lock. It returns after the graceful hand-over.
func (e *Elector) Run(ctx context.Context) error {
	e.announce(core.RoleCandidate, 0, time.Time{}, "", "waiting for the election")
	rctx, stopRefresh := context.WithCancel(ctx)
	defer stopRefresh()
	go e.refresh(rctx)
	for {
		// Follow the holder while campaigning; stop following while master.
		fctx, stopFollow := context.WithCancel(ctx)
		go e.follow(fctx)
		l, err := lease.CampaignWith(ctx, e.cfg.Leaser, lease.CampaignConfig{Self: e.cfg.Local.Info, Logger: e.log, OnDecision: e.decided})
		stopFollow()
		if err != nil {
			if ctx.Err() != nil {
				return nil //nolint:nilerr // a campaign ended by our own stop is not an error
			}
			return fmt.Errorf("election: %w", err)
		}
		err = e.serve(ctx, l)
		if errors.Is(err, errAppFailed) {
			err = e.waitAppBack(ctx)
		}
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil //nolint:nilerr // stopping is the normal end
		}
	}
}

// waitAppBack keeps this instance out of the election after its app failed as master, until
// the app task is back: a gate connected that reports without the failure (Nomad restarted the
// task, after its restart block's delay). Until then it follows the new master as a clone. So
// an app that keeps crashing moves from instance to instance no faster than Nomad's restart
// policy restarts it, and an instance whose app task is gone for good never takes the lock.
func (e *Elector) waitAppBack(ctx context.Context) error {
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	go e.follow(fctx)
	for {
		changed := e.cfg.Announcer.Changed()
		if app := e.cfg.Announcer.App(); app.Reporting > 0 && !app.Failed {
			e.log.Info("the app task is back: campaigning again")
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// follow turns the lock holder into a clone role while we do not hold it.
func (e *Elector) follow(ctx context.Context) {
	for h := range e.cfg.Leaser.Watch(ctx) {
		if !h.Held || h.Info.ID == e.cfg.Local.Info().ID {
			continue
		}
		e.send(core.Assignment{Master: false, Term: h.Term, MasterAddr: h.Info.Address, Base: h.Info.Position})
		e.announce(core.RoleClone, h.Term, time.Time{}, h.Info.Address, fmt.Sprintf("following %s (term %d)", h.Info.Address, h.Term))
	}
}

// serve is one mastership, from winning the lease to losing or releasing it.
func (e *Elector) serve(ctx context.Context, l lease.Lease) error {
	term := l.Term()
	e.send(core.Assignment{Master: true, Term: term})
	// Announce only once the syncer serves as master: it has applied all
	// it held and fenced the old term.
	promoted := time.Now()
	for !e.cfg.Local.Serving(term) {
		select {
		case <-l.Done():
			e.demote(term, "lost the lease before serving: "+errString(l.Err()))
			return nil
		case <-ctx.Done():
			return e.release(ctx, l, term)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(promoted) > e.cfg.PromoteTimeout {
			e.log.Error("the syncer did not become master in time; releasing", "term", term)
			return e.release(ctx, l, term)
		}
	}
	e.log.Info("elected master", "term", term)
	e.announce(core.RoleMaster, term, l.Deadline(), "", fmt.Sprintf("elected master (term %d)", term))
	mctx, stopMarking := context.WithCancel(ctx)
	defer stopMarking()
	go e.markLoop(mctx, l, term)
	for {
		changed := e.cfg.Announcer.Changed()
		if e.cfg.Announcer.App().Failed {
			return e.handOver(ctx, l, term)
		}
		select {
		case <-changed:
		case d := <-l.Renewed():
			e.cfg.Announcer.Update(func(s *announce.State) {
				if s.Role == core.RoleMaster && s.Term == term {
					s.Deadline = d
				}
			})
		case <-l.Done():
			e.demote(term, "lost the lease: "+errString(l.Err()))
			return nil
		case <-ctx.Done():
			return e.release(ctx, l, term)
		}
	}
}

// handOver ends a mastership whose app ended by itself while master (the driver's gate
// reported it: the container has exited, so the app is proven stopped and no deadline needs
// waiting out). The syncer passes on the app's last changes, the service loses its master tag,
// the candidacy is withdrawn so the clones do not wait for this instance, and the lock is
// released without lock-delay: the most caught-up clone takes over within milliseconds, while
// Nomad's restart block decides when this instance's app comes back, as a clone.
func (e *Elector) handOver(ctx context.Context, l lease.Lease, term uint64) error {
	ctx = context.WithoutCancel(ctx)
	e.log.Warn("the app exited while master: handing the lock to a clone", "term", term)
	e.announce(core.RoleClone, term, time.Time{}, "", "stepping down: the app exited while master")
	e.drain(ctx)
	if e.cfg.StepDown != nil {
		sctx, scancel := context.WithTimeout(ctx, stepDownTimeout)
		e.cfg.StepDown(sctx)
		scancel()
	}
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	if err := e.cfg.Leaser.Withdraw(wctx); err != nil {
		e.log.Warn("withdrawing the candidacy failed", "error", err)
	}
	wcancel()
	e.markFinal(ctx, l, term)
	e.send(core.Assignment{Master: false, Term: term})
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if err := l.Release(rctx); err != nil {
		return fmt.Errorf("election: releasing the lock: %w", err)
	}
	e.log.Info("released the lock after the app failed", "term", term)
	return errAppFailed
}

// drain lets the local syncer pass its last changes on (Drainer), bounded by drainTimeout.
func (e *Elector) drain(ctx context.Context) {
	d, ok := e.cfg.Local.(Drainer)
	if !ok {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	if err := d.Drain(dctx); err != nil {
		e.log.Warn("not every clone acknowledged the last changes before the hand-over", "error", err)
	}
}

// demote announces first, then tells the syncer.
func (e *Elector) demote(term uint64, why string) {
	e.log.Warn("demoted", "term", term, "reason", why)
	e.announce(core.RoleClone, term, time.Time{}, "", "demoted: "+why)
	e.send(core.Assignment{Master: false, Term: term})
}

// release hands over gracefully: announce, wait for the app to stop
// (bounded by the deadline) and for StepDown, then release the lock.
func (e *Elector) release(ctx context.Context, l lease.Lease, term uint64) error {
	// ctx has ended (that is why we release): the hand-over runs on its
	// own bounded contexts.
	ctx = context.WithoutCancel(ctx)
	e.announce(core.RoleClone, term, time.Time{}, "", "stepping down")
	stepped := make(chan struct{})
	go func() {
		defer close(stepped)
		if e.cfg.StepDown != nil {
			sctx, scancel := context.WithTimeout(ctx, stepDownTimeout)
			defer scancel()
			e.cfg.StepDown(sctx)
		}
	}()
	wctx, cancel := context.WithDeadline(ctx, l.Deadline().Add(time.Second))
	defer cancel()
	if err := e.cfg.Announcer.WaitAppStopped(wctx); err != nil {
		// Without confirmation (no gate connected: ErrNoGate, or none
		// reported in time) the deadline still protects: Release only
		// after it has passed. A gate that is not connected cannot stop
		// the app, which runs until its deadline.
		time.Sleep(time.Until(l.Deadline()))
	} else {
		e.drain(ctx)
	}
	<-stepped
	e.markFinal(ctx, l, term)
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if err := l.Release(rctx); err != nil {
		return fmt.Errorf("election: releasing the lock: %w", err)
	}
	e.log.Info("released the lock", "term", term)
	return nil
}

func errString(err error) string {
	if err == nil {
		return "released"
	}
	return err.Error()
}
