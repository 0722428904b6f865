package lease

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
)

// node is one instance's election side wired to its announcer, as the syncer will be: it
// campaigns, announces master with the lease's deadline, moves the deadline on renewals and
// announces the loss. Its gate is what the driver would follow.
type node struct {
	l    *Consul
	ann  *announce.Announcer
	gate *announce.Gate
	mu   sync.Mutex
	ls   Lease
}

func startNode(ctx context.Context, t *testing.T, l *Consul, self Info) *node {
	dir, err := os.MkdirTemp("", "inv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, announce.SocketName)
	ann, err := announce.Listen(ctx, sock, announce.AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ann.Close() })
	n := &node{l: l, ann: ann, gate: announce.Follow(ctx, sock, announce.GateConfig{Retry: 20 * time.Millisecond})}
	go func() {
		for ctx.Err() == nil {
			ann.Set(announce.State{Role: announce.RoleCandidate})
			ls, err := Campaign(ctx, l, func() Info { return self }, nil)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.ls = ls
			n.mu.Unlock()
			ann.Set(announce.State{Role: announce.RoleMaster, Term: ls.Term(), Deadline: ls.Deadline()})
			for d := range ls.Renewed() {
				ann.Update(func(s *announce.State) { s.Deadline = d })
			}
			ann.Set(announce.State{Role: announce.RoleUnknown, Term: ls.Term()})
		}
	}()
	return n
}

func (n *node) lease() Lease {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ls
}

// overlapSampler polls both gates every millisecond: it records any instant both are open,
// when a's gate was last seen open and when b's was first seen open.
type overlapSampler struct {
	mu           sync.Mutex
	overlaps     int
	aLastOpen    time.Time
	bFirstOpen   time.Time
	stop         chan struct{}
	done         chan struct{}
	aGate, bGate *announce.Gate
}

func sample(a, b *announce.Gate) *overlapSampler {
	s := &overlapSampler{aGate: a, bGate: b, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(time.Millisecond):
			}
			now := time.Now()
			ao, bo := a.MayRun(now), b.MayRun(now)
			s.mu.Lock()
			if ao && bo {
				s.overlaps++
			}
			if ao {
				s.aLastOpen = now
			}
			if bo && s.bFirstOpen.IsZero() {
				s.bFirstOpen = now
			}
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *overlapSampler) finish() (overlaps int, aLast, bFirst time.Time) {
	close(s.stop)
	<-s.done
	return s.overlaps, s.aLastOpen, s.bFirstOpen
}

// One master at a time, end to end through the announcement gates: the master's syncer loses
// all contact (it stops renewing and watching, but its announcer keeps heartbeating the last
// deadline, the worst case for the driver) and its session is invalidated right after a
// renewal. The other instance's gate must open only after the old one's gate closed, with
// at least the stop budget in between; a graceful stop hands over in milliseconds.
func (e *env) oneMasterAtATime(t *testing.T) {
	t.Parallel()
	tm := DefaultTiming()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for _, scenario := range []string{"invalidated", "graceful"} {
		g := e.newGroup()
		a := e.leaser(t, 0, g, "a", tm)
		b := e.leaser(t, 1, g, "b", tm)
		na := startNode(ctx, t, a, info("a", 100))
		waitFor(t, 10*time.Second, func() bool { return na.gate.MayRun(time.Now()) })
		nb := startNode(ctx, t, b, info("b", 90))
		waitFor(t, 5*time.Second, func() bool {
			return nb.gate.Status(time.Now()).State.Role == announce.RoleCandidate
		})
		s := sample(na.gate, nb.gate)
		time.Sleep(300 * time.Millisecond)

		var cut time.Time
		switch scenario {
		case "invalidated":
			la := na.lease()
			select { // right after a renewal, the tightest moment
			case <-time.After(2 * time.Second):
			case <-waitRenewed(la):
			}
			crash(a) // no more renewals nor watching: only the deadline fences it
			cut = time.Now()
			if _, err := e.c.Client().Session().Destroy(a.Session(), nil); err != nil {
				t.Fatal(err)
			}
		case "graceful":
			cut = time.Now()
			if err := a.Close(ctx); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 15*time.Second, func() bool { return nb.gate.MayRun(time.Now()) })
		overlaps, aLast, bFirst := s.finish()
		t.Logf("%s: old master's gate last open %s after the cut, new master's first open %s after the cut (gap %s, term %d → %d)",
			scenario, aLast.Sub(cut).Round(time.Millisecond), bFirst.Sub(cut).Round(time.Millisecond),
			bFirst.Sub(aLast).Round(time.Millisecond), na.lease().Term(), nb.lease().Term())
		if overlaps > 0 {
			t.Fatalf("%s: both gates open at %d sampled instants", scenario, overlaps)
		}
		if scenario == "invalidated" && bFirst.Sub(aLast) < tm.StopBudget {
			t.Fatalf("%s: new master open %s after the old one closed, want ≥ stop budget %s",
				scenario, bFirst.Sub(aLast), tm.StopBudget)
		}
		if scenario == "graceful" && bFirst.Sub(cut) > time.Second {
			t.Fatalf("graceful handover took %s", bFirst.Sub(cut))
		}
	}
}

// waitRenewed returns a channel closed at the lease's next renewal (the Renewed channel may
// hold an older one: drain it first).
func waitRenewed(l Lease) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		d0 := l.Deadline()
		for time.Since(d0.Add(-time.Hour)) > 0 {
			if l.Deadline().After(d0) || l.Err() != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return ch
}
