package election

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// fakeSyncer plays the local syncer: it follows the elector's roles and
// serves as master as soon as told.
type fakeSyncer struct {
	id   string
	mu   sync.Mutex
	role Role
}

func (f *fakeSyncer) Info() lease.Info {
	return lease.Info{ID: f.id, Address: f.id + ":7400", CaughtUp: true, Position: lease.Position{Term: 1, Seq: 10}}
}

func (f *fakeSyncer) Serving(term uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.role.Master && f.role.Term == term
}

type instance struct {
	id     string
	ann    *announce.Announcer
	gate   *announce.Gate
	cancel context.CancelFunc
	done   chan error
}

func startInstance(t *testing.T, c *consul.Cluster, node int, id string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l, err := lease.NewConsul(ctx, lease.ConsulConfig{
		Client: c.Clients[node].APIClient(t), Namespace: "default", Job: "job", Group: "g", ID: id,
	})
	if err != nil {
		t.Fatal(err)
	}
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
	in := &instance{id: id, ann: ann, cancel: cancel, done: make(chan error, 1)}
	// The driver's side: a gate that reports the app as running while open.
	gctx, gcancel := context.WithCancel(context.Background())
	in.gate = announce.Follow(gctx, sock, announce.GateConfig{})
	go func() {
		for st := range in.gate.Updates() {
			in.gate.Report(st.Open)
		}
	}()
	runCtx, runCancel := context.WithCancel(ctx)
	in.cancel = runCancel
	go func() { in.done <- e.Run(runCtx) }()
	t.Cleanup(func() {
		runCancel()
		<-in.done
		gcancel()
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

// TestOneMasterAndGracefulHandover: three instances on three Consul
// nodes elect exactly one master; a graceful stop hands over to another
// within a second, and no two gates are ever open together.
func TestOneMasterAndGracefulHandover(t *testing.T) {
	c := consul.Start(t, consul.WithClients(3))
	var ins []*instance
	for i := 0; i < 3; i++ {
		ins = append(ins, startInstance(t, c, i, fmt.Sprintf("alloc-%d", i)))
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
