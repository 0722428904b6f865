package lease

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// appStopDelay is how long the simulated driver takes to kill the app after its gate closes
// (within the stop budget).
const appStopDelay = 100 * time.Millisecond

// node is one instance wired as the syncer and the driver will be: the election side
// campaigns and announces master with the lease's deadline (moving it on renewals, announcing
// the loss), and a simulated driver follows the gate, "runs" the app while it is open, kills it
// appStopDelay after it closes and reports.
type node struct {
	l       *Consul
	ann     *announce.Announcer
	gate    *announce.Gate
	running atomic.Bool // the simulated app
	mu      sync.Mutex
	ls      Lease
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
	go n.elect(ctx, self)
	go n.drive(ctx)
	return n
}

func (n *node) elect(ctx context.Context, self Info) {
	for ctx.Err() == nil {
		n.ann.Set(announce.State{Role: core.RoleCandidate})
		ls, err := Campaign(ctx, n.l, func() Info { return self }, nil)
		if err != nil {
			return
		}
		n.mu.Lock()
		n.ls = ls
		n.mu.Unlock()
		n.ann.Set(announce.State{Role: core.RoleMaster, Term: ls.Term(), Deadline: ls.Deadline()})
		for d := range ls.Renewed() {
			n.ann.Update(func(s *announce.State) {
				if s.Role == core.RoleMaster {
					s.Deadline = d
				}
			})
		}
		n.ann.Set(announce.State{Role: core.RoleUnknown, Term: ls.Term()})
	}
}

func (n *node) drive(ctx context.Context) {
	n.gate.Report(false)
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-n.gate.Updates():
			switch {
			case st.Open && !n.running.Load() && n.gate.MayRun(time.Now()):
				n.running.Store(true)
				n.gate.Report(true)
			case !st.Open && n.running.Load():
				time.Sleep(appStopDelay)
				n.running.Store(false)
				n.gate.Report(false)
			}
		}
	}
}

// stepDown is the syncer's graceful stop: announce it, wait for the driver to confirm the app
// stopped (bounded by the deadline plus the stop budget), then Close (release, no lock-delay).
func (n *node) stepDown(ctx context.Context) error {
	n.ann.Set(announce.State{Role: core.RoleUnknown, Message: "stopping"})
	if ls := n.lease(); ls != nil && ls.Err() == nil {
		wctx, cancel := context.WithDeadline(ctx, ls.Deadline().Add(n.l.Timing().StopBudget))
		if err := n.ann.WaitAppStopped(wctx); err != nil {
			<-wctx.Done()
		}
		cancel()
	}
	return n.l.Close(ctx)
}

func (n *node) lease() Lease {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ls
}

// overlapSampler polls both apps every millisecond: it counts instants both run and records
// when a's app was last seen running and when b's was first seen running.
type overlapSampler struct {
	mu         sync.Mutex
	overlaps   int
	aLast      time.Time
	bFirst     time.Time
	stop, done chan struct{}
}

func sample(a, b *node) *overlapSampler {
	s := &overlapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(time.Millisecond):
			}
			now := time.Now()
			ar, br := a.running.Load(), b.running.Load()
			s.mu.Lock()
			if ar && br {
				s.overlaps++
			}
			if ar {
				s.aLast = now
			}
			if br && s.bFirst.IsZero() {
				s.bFirst = now
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// sawB tells whether the sampler has seen b's app running.
func (s *overlapSampler) sawB() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.bFirst.IsZero()
}

func (s *overlapSampler) finish() (overlaps int, aLast, bFirst time.Time) {
	close(s.stop)
	<-s.done
	return s.overlaps, s.aLast, s.bFirst
}

// One master at a time, end to end through the announcements and a simulated driver.
//
//   - invalidated: the master's syncer loses all contact (no more renewals nor watching, while
//     its announcer keeps heartbeating the last deadline: the worst case for the driver) and
//     its session is invalidated right after a renewal. Only the deadline fences it: the other
//     app may start only after the old one died, with lock-delay to spare.
//   - graceful: the master steps down (announce, driver confirms the app stopped, release):
//     the other app starts within the stop time plus a few milliseconds.
func (e *env) oneMasterAtATime(t *testing.T) {
	t.Parallel()
	tm := DefaultTiming()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for _, scenario := range []string{"invalidated", "graceful"} {
		g := e.newGroup()
		a := e.leaser(t, 0, g, "a", tm)
		b := e.leaser(t, 1, g, "b", tm)
		na := startNode(ctx, t, a, info("a", 0)) // the group's first master starts from nothing
		testutil.WaitFor(t, 10*time.Second, func() bool { return na.running.Load() })
		nb := startNode(ctx, t, b, info("b", 90))
		testutil.WaitFor(t, 5*time.Second, func() bool {
			return nb.gate.Status(time.Now()).State.Role == core.RoleCandidate
		})
		s := sample(na, nb)
		time.Sleep(300 * time.Millisecond)

		var cut time.Time
		switch scenario {
		case "invalidated":
			la := na.lease()
			d0 := la.Deadline()
			testutil.WaitFor(t, 2*time.Second, func() bool { return la.Deadline().After(d0) }) // just renewed
			crash(a)
			cut = time.Now()
			if _, err := e.c.Client().Session().Destroy(a.Session(), nil); err != nil {
				t.Fatal(err)
			}
		case "graceful":
			cut = time.Now()
			if err := na.stepDown(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// until the sampler itself saw the new app run (it polls; under load it may lag)
		testutil.WaitFor(t, 15*time.Second, s.sawB)
		overlaps, aLast, bFirst := s.finish()
		t.Logf("%s: old app last seen running %s after the cut, new app running %s after the cut (gap %s, term %d → %d)",
			scenario, aLast.Sub(cut).Round(time.Millisecond), bFirst.Sub(cut).Round(time.Millisecond),
			bFirst.Sub(aLast).Round(time.Millisecond), na.lease().Term(), nb.lease().Term())
		if overlaps > 0 {
			t.Fatalf("%s: both apps running at %d sampled instants", scenario, overlaps)
		}
		if !bFirst.After(aLast) {
			t.Fatalf("%s: new app started before the old one was last seen running", scenario)
		}
		switch scenario {
		case "invalidated":
			if gap := bFirst.Sub(aLast); gap < tm.StopBudget-appStopDelay {
				t.Fatalf("new app started %s after the old one died; the unused stop budget (%s) should be spare",
					gap, tm.StopBudget-appStopDelay)
			}
		case "graceful":
			if took := bFirst.Sub(cut); took > appStopDelay+time.Second {
				t.Fatalf("graceful handover took %s", took)
			}
		}
	}
}
