package election

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// fakeSyncer plays the local syncer: it follows the elector's roles and
// serves as master as soon as told.
type fakeSyncer struct {
	id   string
	mu   sync.Mutex
	role core.Assignment
}

func (f *fakeSyncer) Info() lease.Info {
	return lease.Info{ID: f.id, Address: f.id + ":7400", CaughtUp: true, Position: core.Position{Term: 1, Seq: 10}}
}

func (f *fakeSyncer) Serving(term uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.role.Master && f.role.Term == term
}

type instance struct {
	id     string
	sock   string
	ann    *announce.Announcer
	gate   *announce.Gate
	cancel context.CancelFunc
	done   chan error
	// failed stops the driver's reports once the app failed (the gate loop ends there).
	failed atomic.Bool
	// stopGate ends the gate's connection (the app task destroyed by Nomad).
	stopGate context.CancelFunc
}

// follow starts a gate on the instance's socket that reports the app as running while open,
// as the driver does, until the app fails.
func (in *instance) follow() {
	gctx, gcancel := context.WithCancel(context.Background())
	g := announce.Follow(gctx, in.sock, announce.GateConfig{})
	in.gate, in.stopGate = g, gcancel
	go func() {
		for st := range g.Updates() {
			if !in.failed.Load() {
				g.Report(st.Open)
			}
		}
	}()
}

// group joins instance number node, named id, to one election group.
type group func(t *testing.T, node int, id string) lease.Leaser

// memoryGroup is a group on the in-memory leaser: the election logic without a Consul agent.
func memoryGroup(*testing.T) group {
	m := lease.NewMemory(lease.Timing{})
	return func(_ *testing.T, _ int, id string) lease.Leaser { return m.Join(id) }
}

// consulGroup is a group on a real Consul, one client agent per instance.
func consulGroup(t *testing.T) group {
	testutil.RequireConsul(t)
	c := consul.Start(t, consul.WithClients(3))
	return func(t *testing.T, node int, id string) lease.Leaser {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := lease.NewConsul(ctx, lease.ConsulConfig{
			Client: c.Clients[node].APIClient(t), Namespace: "default", Job: "job", Group: "g", ID: id,
		})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
}

// eachGroup runs test on the in-memory leaser and on Consul.
func eachGroup(t *testing.T, test func(t *testing.T, join group)) {
	t.Run("memory", func(t *testing.T) { test(t, memoryGroup(t)) })
	t.Run("consul", func(t *testing.T) { test(t, consulGroup(t)) })
}

func startInstance(t *testing.T, join group, node int, id string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := join(t, node, id)
	sock := filepath.Join(t.TempDir(), "role.sock")
	ann, err := announce.Listen(ctx, sock, announce.AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeSyncer{id: id}
	e, err := New(Config{Leaser: l, Announcer: ann, Local: fs})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for r := range e.Roles() {
			fs.mu.Lock()
			fs.role = r
			fs.mu.Unlock()
		}
	}()
	in := &instance{id: id, sock: sock, ann: ann, cancel: cancel, done: make(chan error, 1)}
	// The driver's side: a gate that reports the app as running while open.
	in.follow()
	runCtx, runCancel := context.WithCancel(ctx)
	in.cancel = runCancel
	go func() { in.done <- e.Run(runCtx) }()
	t.Cleanup(func() {
		runCancel()
		<-in.done
		in.stopGate()
		_ = ann.Close()
		_ = l.Close(context.Background())
		cancel()
	})
	return in
}

func masters(ins []*instance) []string {
	var out []string
	for _, in := range ins {
		if in.gate.MayRun(time.Now()) {
			out = append(out, in.id)
		}
	}
	return out
}

// waitOneMaster waits for exactly one open gate, other than not (if set),
// failing the moment two are open together.
func waitOneMaster(t *testing.T, ins []*instance, not *instance, within time.Duration) *instance {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		m := masters(ins)
		if len(m) > 1 {
			t.Fatalf("two masters at once: %v", m)
		}
		if len(m) == 1 && (not == nil || m[0] != not.id) {
			for _, in := range ins {
				if in.id == m[0] {
					return in
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no master within %v", within)
	return nil
}

// TestOneMasterAndGracefulHandover: three instances (in memory, then on three Consul
// nodes) elect exactly one master; a graceful stop hands over to another
// within a second, and no two gates are ever open together.
func TestOneMasterAndGracefulHandover(t *testing.T) { eachGroup(t, oneMasterAndGracefulHandover) }

func oneMasterAndGracefulHandover(t *testing.T, join group) {
	var ins []*instance
	for i := 0; i < 3; i++ {
		ins = append(ins, startInstance(t, join, i, fmt.Sprintf("alloc-%d", i)))
	}
	first := waitOneMaster(t, ins, nil, 15*time.Second)
	// Stable: still exactly one a few heartbeats later.
	for i := 0; i < 20; i++ {
		if m := masters(ins); len(m) != 1 || m[0] != first.id {
			t.Fatalf("mastership moved or doubled without a fault: %v", m)
		}
		time.Sleep(50 * time.Millisecond)
	}

	start := time.Now()
	first.cancel()
	var rest []*instance
	for _, in := range ins {
		if in != first {
			rest = append(rest, in)
		}
	}
	second := waitOneMaster(t, append(rest, first), first, 10*time.Second)
	took := time.Since(start)
	t.Logf("graceful handover %s -> %s in %v", first.id, second.id, took)
	if took > 3*time.Second {
		t.Errorf("graceful handover took %v", took)
	}
	select {
	case err := <-first.done:
		if err != nil {
			t.Errorf("the stopped elector: %v", err)
		}
		first.done <- nil
	case <-time.After(5 * time.Second):
		t.Error("the stopped elector did not return")
	}
	// The new master's term is newer.
	if s1, s2 := first.ann.State(), second.ann.State(); s2.Term <= s1.Term {
		t.Errorf("terms did not grow: %d then %d", s1.Term, s2.Term)
	}
}

// TestAppFailureHandsOverUntilTheAppIsBack: when the master's app exits by itself (the driver's
// gate reports it failed), the lock goes to another instance at once, without waiting for a
// deadline; the failed instance takes no part in elections while its app task is down, and
// takes part again once the app task is back (a new gate). Without the hand-over the failed
// instance keeps the lock until Nomad's restart delay has passed.
func TestAppFailureHandsOverUntilTheAppIsBack(t *testing.T) {
	eachGroup(t, appFailureHandsOverUntilTheAppIsBack)
}

func appFailureHandsOverUntilTheAppIsBack(t *testing.T, join group) {
	var ins []*instance
	for i := 0; i < 3; i++ {
		ins = append(ins, startInstance(t, join, i, fmt.Sprintf("alloc-%d", i)))
	}
	first := waitOneMaster(t, ins, nil, 15*time.Second)
	start := time.Now()
	first.failed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := first.gate.ReportFailed(ctx); err != nil {
		t.Fatal(err)
	}
	second := waitOneMaster(t, ins, first, 3*time.Second)
	if took := time.Since(start); took > time.Second {
		t.Errorf("the hand-over after the app failed took %v", took)
	}
	t.Logf("app of %s failed: %s master after %v", first.id, second.id, time.Since(start))

	// The second master stops: the failed instance, its app still down, must not take over.
	second.cancel()
	third := waitOneMaster(t, ins, second, 10*time.Second)
	if third == first {
		t.Fatalf("%s took the lock while its app task was down", first.id)
	}
	// Nomad restarts the app task: a new gate connects, and the instance is a candidate again.
	first.stopGate()
	first.failed.Store(false)
	first.follow()
	third.cancel()
	if back := waitOneMaster(t, ins, third, 10*time.Second); back != first {
		t.Fatalf("with its app back, %s should be the only candidate left, but %s is master", first.id, back.id)
	}
}
