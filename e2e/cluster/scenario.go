package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// AckWindow is the replication window of the design's promise: no write made at least this
// long before a fault is lost, across any sequence of faults.
const AckWindow = 250 * time.Millisecond

// Fault is one way of losing the master.
type Fault string

// The faults of the failover scenarios.
const (
	// KillApp: kill -9 of the master's app container; the app task fails for good
	// (restart attempts = 0), Nomad stops the allocation and places a replacement.
	KillApp Fault = "kill-app"
	// KillSyncer: kill -9 of the master's syncer container; Nomad restarts it in place.
	KillSyncer Fault = "kill-syncer"
	// FreezeSyncer: SIGSTOP of the master's syncer beyond the session TTL, then SIGCONT.
	FreezeSyncer Fault = "freeze-syncer"
	// NodeLoss: the master's node dies whole (Consul agent, plugin, syncer and app at once)
	// and comes back later with its allocation.
	NodeLoss Fault = "node-loss"
	// Graceful: the master's allocation is stopped (nomad alloc stop) and replaced.
	Graceful Fault = "graceful"
	// Partition: the master's node is cut off from Consul (its agent's network namespace is
	// disconnected) and later reconnected. Needs Options.Netns.
	Partition Fault = "partition"
)

// Faults lists the scenarios in a sensible order.
var Faults = []Fault{Graceful, KillApp, KillSyncer, FreezeSyncer, NodeLoss, Partition}

// Result is one scenario's outcome.
type Result struct {
	Fault            Fault
	OldMaster, New   *Alloc
	OldTerm, NewTerm uint64
	Failover         time.Duration // fault → the new master's first write
	SplitBrain       []string      // overlapping masters, from the writes and from Consul
	LostWrites       int           // lines a clone held at the fault that the new master lacks
	NotSetAside      int           // old master's writes from before the window neither on the new master nor in its lost+found
	// LostInWindow counts the old master's writes of the last AckWindow before the fault that
	// are neither on the new master nor set aside: the asynchronous replication's window,
	// measured (an instance replaced on another node takes its unreplicated tail with it).
	LostInWindow int
	// Integrity and Gaps are, with the SQLite workload, PRAGMA integrity_check's verdict on the
	// new master's database and how many ids are missing below its highest one.
	Integrity          string
	Gaps               int
	SetAside           int // old master's writes found in lost+found
	ClonesHeldAtFault  int
	OldMasterWroteLast time.Time
}

// OK tells whether the invariants held.
func (r *Result) OK() bool {
	return len(r.SplitBrain) == 0 && r.LostWrites == 0 && r.NotSetAside == 0 && (r.Integrity == "" || r.Integrity == "ok") && r.Gaps == 0
}

func (r *Result) String() string {
	return fmt.Sprintf("%s: %s (term %d) → %s (term %d) in %s; split-brain %d, lost %d, set aside %d, lost in the last %s %d, unaccounted %d",
		r.Fault, shortAlloc(r.OldMaster), r.OldTerm, shortAlloc(r.New), r.NewTerm, r.Failover.Round(time.Millisecond),
		len(r.SplitBrain), r.LostWrites, r.SetAside, AckWindow, r.LostInWindow, r.NotSetAside) + r.sqliteString()
}

// Run injects fault into the current master, waits for the new master to serve, restores
// what the fault took (as Nomad or the operator would), waits until the old instance is a
// synced clone again, and checks the invariants.
func (c *Cluster) Run(ctx context.Context, fault Fault) (*Result, error) {
	old, err := c.stableMaster(ctx)
	if err != nil {
		return nil, err
	}
	r := &Result{Fault: fault, OldMaster: old.Alloc, OldTerm: old.Term}
	held := lineSet{}
	for _, n := range c.Nodes {
		a := n.Current()
		if a == nil || a == old.Alloc {
			continue
		}
		ws, _ := c.dataWrites(ctx, a)
		for _, w := range ws {
			held[w.Key()] = true
		}
	}
	r.ClonesHeldAtFault = len(held)

	t0 := time.Now()
	c.faultAt = t0
	if err := c.Inject(ctx, old.Alloc, fault); err != nil {
		return r, fmt.Errorf("%s: injecting: %w", fault, err)
	}
	serving, err := c.WaitMaster(ctx, old.Term, 90*time.Second)
	if err != nil {
		return r, fmt.Errorf("%s: %w", fault, err)
	}
	r.New, r.NewTerm, r.Failover = serving.Alloc, serving.Term, serving.At.Sub(t0)
	c.Logf("%s: new master %s at term %d serving %s after the fault", fault, shortAlloc(r.New), r.NewTerm, r.Failover.Round(time.Millisecond))

	back, err := c.Restore(ctx, old.Alloc, fault)
	if err != nil {
		return r, fmt.Errorf("%s: restoring: %w", fault, err)
	}
	if err := c.waitSynced(ctx, back, r.New, 90*time.Second); err != nil {
		return r, fmt.Errorf("%s: the old master's node did not come back as a synced clone: %w", fault, err)
	}
	c.check(ctx, r, held, back)
	return r, nil
}

// stableMaster waits for a master that writes and whose writes reach every clone.
func (c *Cluster) stableMaster(ctx context.Context) (*Serving, error) {
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		m, term, err := c.Master(ctx)
		if err == nil && m != nil && m == m.Node.Current() {
			ws, _ := c.dataWrites(ctx, m)
			if len(ws) > 0 && ws[len(ws)-1].Term == term {
				last := ws[len(ws)-1].Key()
				synced := true
				for _, n := range c.Nodes {
					if a := n.Current(); a != nil && a != m && !setOf(must(c.dataWrites(ctx, a)))[last] {
						synced = false
					}
				}
				if synced {
					return &Serving{Alloc: m, Term: term}, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a stable master: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("no stable master (writing, with every clone caught up) within 90s; holders: %s", c.history.String())
}

func mustRead(p string) []Write {
	ws, _ := ReadWrites(p)
	return ws
}

// Inject makes allocation a suffer fault.
func (c *Cluster) Inject(ctx context.Context, a *Alloc, fault Fault) error {
	if c.nomad != nil {
		c.nomad.noteRestarts(a, map[Fault]string{KillApp: "app", KillSyncer: "syncer", FreezeSyncer: "syncer"}[fault])
	}
	switch fault {
	case KillApp:
		return c.signal(ctx, a, "app", "SIGKILL")
	case KillSyncer:
		return c.signal(ctx, a, "syncer", "SIGKILL")
	case FreezeSyncer:
		return c.signal(ctx, a, "syncer", "SIGSTOP")
	case NodeLoss:
		n := a.Node
		if c.nomad != nil {
			return c.nomad.killNode(ctx, n, a)
		}
		c.Consul.KillClient(n.Index)
		n.Agent.Plugin.Kill()
		errs := []error{c.signal(ctx, a, "syncer", "SIGKILL"), c.signal(ctx, a, "app", "SIGKILL")}
		return errors.Join(errs...)
	case Graceful:
		go a.Stop(context.WithoutCancel(ctx))
		return nil
	case Partition:
		if !c.Opts.Netns {
			return errors.New("the partition fault needs a cluster started with Options.Netns")
		}
		c.Consul.Partition(a.Node.Index) //nolint:contextcheck // bounded by the helper's own timeout
		return nil
	}
	return fmt.Errorf("unknown fault %q", fault)
}

func (c *Cluster) signal(ctx context.Context, a *Alloc, task, sig string) error {
	id, err := a.ContainerOf(ctx, task)
	if err != nil {
		return err
	}
	if err := c.Docker.ContainerKill(ctx, id, sig); err != nil && !strings.Contains(err.Error(), "is not running") {
		return fmt.Errorf("%s to the %s container: %w", sig, task, err)
	}
	return nil
}

// Restore undoes the fault the way the cluster would heal, and returns the allocation that
// now stands for the old master's instance.
func (c *Cluster) Restore(ctx context.Context, a *Alloc, fault Fault) (*Alloc, error) {
	n := a.Node
	if c.nomad != nil {
		return c.restoreNomad(ctx, a, fault)
	}
	switch fault {
	case KillApp, Graceful:
		// Nomad places a replacement (superviseApp does it for KillApp).
		if fault == Graceful {
			if _, err := n.StartAlloc(ctx); err != nil {
				return nil, err
			}
		}
		deadline := time.Now().Add(60 * time.Second)
		for n.Current() == a {
			if time.Now().After(deadline) {
				return nil, errors.New("no replacement allocation placed")
			}
			time.Sleep(50 * time.Millisecond)
		}
		return n.Current(), nil
	case KillSyncer:
		return a, nil // restarted in place by superviseSyncer
	case FreezeSyncer:
		// the watchdog has usually killed it, and the supervisor destroyed and restarted it
		_ = c.signal(ctx, a, "syncer", "SIGCONT")
		return a, nil
	case Partition:
		c.Consul.Heal(n.Index) //nolint:contextcheck // bounded by the helper's start timeout
		return a, nil
	case NodeLoss:
		c.Consul.RestartClient(n.Index) //nolint:contextcheck // bounded by the Consul helper's own start timeout
		if err := n.startAgent(ctx); err != nil {
			return nil, err
		}
		a.mu.Lock()
		oldS, oldA := a.syncer, a.app
		a.mu.Unlock()
		if oldS != nil {
			oldS.Logs.Close()
		}
		if oldA != nil {
			oldA.Logs.Close()
		}
		if err := a.startSyncer(ctx); err != nil {
			return nil, err
		}
		return a, a.startApp(ctx)
	}
	return nil, fmt.Errorf("unknown fault %q", fault)
}

// waitSynced waits until a's data holds every line the master's data held when the wait began
// plus one it wrote afterwards: a follows the live stream.
func (c *Cluster) waitSynced(ctx context.Context, a, master *Alloc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	start := time.Now()
	for time.Now().Before(deadline) {
		mws := must(c.dataWrites(ctx, master))
		if len(mws) > 0 && mws[len(mws)-1].At.After(start) {
			last := mws[len(mws)-1].Key()
			if setOf(must(c.dataWrites(ctx, a)))[last] {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for sync: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not in sync with %s after %s; its syncer says: %s", shortAlloc(a), shortAlloc(master), timeout, tailLines(a.SyncerLogs(), 8))
}

// check fills r's invariant counts.
func (c *Cluster) check(ctx context.Context, r *Result, held lineSet, back *Alloc) {
	// One master at a time, from the writes: the [first, last] write of each (instance, term)
	// must not overlap another instance's.
	type span struct {
		id          string
		term        uint64
		first, last time.Time
	}
	spans := map[string]*span{}
	for _, n := range c.Nodes {
		for _, a := range n.Allocs() {
			for _, w := range mustRead(a.WitnessFile()) {
				k := fmt.Sprintf("%s/%d", w.ID, w.Term)
				s := spans[k]
				if s == nil {
					s = &span{id: w.ID, term: w.Term, first: w.At, last: w.At}
					spans[k] = s
				}
				if w.At.Before(s.first) {
					s.first = w.At
				}
				if w.At.After(s.last) {
					s.last = w.At
				}
			}
		}
	}
	list := make([]*span, 0, len(spans))
	for _, s := range spans {
		list = append(list, s)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].first.Before(list[j].first) })
	for i := range list {
		for j := i + 1; j < len(list); j++ {
			a, b := list[i], list[j]
			if a.id != b.id && b.first.Before(a.last) {
				r.SplitBrain = append(r.SplitBrain, fmt.Sprintf("%s (term %d, %s..%s) and %s (term %d, from %s) wrote at the same time",
					a.id, a.term, a.first.Format("15:04:05.000"), a.last.Format("15:04:05.000"), b.id, b.term, b.first.Format("15:04:05.000")))
			}
			if a.term == b.term && a.term != 0 && a.id != b.id {
				r.SplitBrain = append(r.SplitBrain, fmt.Sprintf("%s and %s both wrote at term %d", a.id, b.id, a.term))
			}
		}
	}
	r.SplitBrain = append(r.SplitBrain, c.history.Overlaps()...)

	if c.Opts.App == AppSQLite || c.Opts.App == AppLedger {
		st, err := c.readState(ctx, r.New.DataFile(""))
		switch {
		case err != nil:
			r.Integrity = err.Error()
		case st != nil:
			r.Integrity, r.Gaps = st.Integrity, len(st.Gaps)
		}
	}
	// Nothing a clone held is lost.
	onNew := setOf(must(c.dataWrites(ctx, r.New)))
	for l := range held {
		if !onNew[l] {
			r.LostWrites++
		}
	}
	// The old master's writes are on the new master or set aside in its lost+found.
	aside := c.lostFound(ctx, back)
	if back != r.OldMaster {
		aside = lineSet{} // a replacement starts empty: everything must have been replicated
	}
	for _, w := range mustRead(r.OldMaster.WitnessFile()) {
		if w.Term != r.OldTerm {
			continue
		}
		if w.At.After(r.OldMasterWroteLast) {
			r.OldMasterWroteLast = w.At
		}
		switch {
		case onNew[w.Key()]:
		case aside[w.Key()]:
			r.SetAside++
		case !w.At.Before(c.faultAt.Add(-AckWindow)):
			r.LostInWindow++
		default:
			r.NotSetAside++
		}
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// restoreNomad heals what the fault took under a real Nomad: Nomad restarts or replaces the
// tasks by its own policies; the cluster only brings back what an operator would (a node's
// agents, a cut link, a frozen process).
func (c *Cluster) restoreNomad(ctx context.Context, a *Alloc, fault Fault) (*Alloc, error) {
	n := a.Node
	switch fault {
	case FreezeSyncer:
		// the watchdog has usually killed it by now
		_ = c.signal(ctx, a, "syncer", "SIGCONT")
	case Partition:
		c.Consul.Heal(n.Index) //nolint:contextcheck // bounded by the helper's start timeout
	case NodeLoss:
		if err := c.nomad.restoreNode(ctx, n); err != nil {
			return nil, err
		}
	case KillApp, KillSyncer, Graceful:
	default:
		return nil, fmt.Errorf("unknown fault %q", fault)
	}
	return c.nomad.waitReplaced(ctx, a, c.faultAt, 3*time.Minute)
}

func (r *Result) sqliteString() string {
	if r.Integrity == "" {
		return ""
	}
	return fmt.Sprintf("; integrity_check %s, id gaps %d", r.Integrity, r.Gaps)
}
