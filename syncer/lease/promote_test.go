package lease

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// The promotion rule (highwater.go), interleaving by interleaving, on the in-memory group.
// Each test scripts a failover that lost data before the rule: the stale candidate is given
// every timing advantage, so that only the rule can keep it from winning.

func memTiming() Timing {
	return Timing{TTL: 3 * time.Second, LockDelay: 300 * time.Millisecond, Drift: 1.05, StopBudget: 50 * time.Millisecond,
		RetryEvery: 20 * time.Millisecond, RankDelay: 250 * time.Millisecond, MaxRankDelay: 750 * time.Millisecond}
}

func pos(term, seq uint64) core.Position { return core.Position{Term: term, Seq: seq} }

// member is one instance's view of itself, changeable while it campaigns.
type member struct {
	id  string
	cur atomic.Value // Info
}

func newMember(id string, p core.Position, caughtUp bool) *member {
	m := &member{id: id}
	m.set(p, caughtUp)
	return m
}

func (m *member) set(p core.Position, caughtUp bool) {
	m.cur.Store(Info{ID: m.id, Address: m.id + ":7400", Position: p, CaughtUp: caughtUp})
}

func (m *member) self() Info { return m.cur.Load().(Info) }

func campaignAs(ctx context.Context, l Leaser, m *member, onDecision func(Decision)) <-chan won {
	ch := make(chan won, 1)
	go func() {
		ls, err := CampaignWith(ctx, l, CampaignConfig{Self: m.self, OnDecision: onDecision})
		ch <- won{ls, time.Now(), err}
	}()
	return ch
}

// slowWatch delays every lock-key event by d: an instance whose agent tells it late.
type slowWatch struct {
	Leaser
	d time.Duration
}

func (s slowWatch) Watch(ctx context.Context) <-chan Holder {
	in := s.Leaser.Watch(ctx)
	out := make(chan Holder, 1)
	go func() {
		defer close(out)
		for h := range in {
			select {
			case <-time.After(s.d):
			case <-ctx.Done():
				return
			}
			sendLatest(out, h)
		}
	}()
	return out
}

// slowAcquire delays every acquisition attempt by d: an instance whose lock requests are slow.
type slowAcquire struct {
	Leaser
	d time.Duration
}

func (s slowAcquire) Acquire(ctx context.Context, info Info) (Lease, error) {
	time.Sleep(s.d)
	return s.Leaser.Acquire(ctx, info)
}

// mastership has id take the lock at start (a master), publish its candidacy, and mark hw.
func mastership(t *testing.T, l *MemoryLeaser, id string, start, hw core.Position) Lease {
	t.Helper()
	ctx := context.Background()
	ls, err := l.Acquire(ctx, Info{ID: id, Position: start, CaughtUp: true})
	if err != nil {
		t.Fatalf("%s takes the lock: %v", id, err)
	}
	if err := ls.Mark(ctx, hw); err != nil {
		t.Fatalf("%s marks %s: %v", id, hw, err)
	}
	return ls
}

func expectWinner(t *testing.T, want string, within time.Duration, chans map[string]<-chan won) won {
	t.Helper()
	timeout := time.After(within)
	for {
		for id, ch := range chans {
			select {
			case w := <-ch:
				if w.err != nil {
					t.Fatalf("%s: %v", id, w.err)
				}
				if id != want {
					t.Fatalf("%s took the lock (term %d); %s should have", id, w.lease.Term(), want)
				}
				return w
			default:
			}
		}
		select {
		case <-timeout:
			t.Fatalf("nobody took the lock within %s (want %s)", within, want)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// The incident of issue 13: the former term-2 master, restarted by Nomad, claims the position
// it recorded long ago (1/0) and completeness from its state; the clone that followed term 3 to
// the end holds 3/500 but is slow to react after the term-3 master's session is invalidated.
// Before the rule, the stale instance's 1s rank delay ran out before the lock-delay, and it won
// whenever it tried first; now it cannot win however long the good clone takes.
func TestPromotionStaleRejoinedMasterNeverWins(t *testing.T) {
	g := NewMemory(memTiming())
	old, m3, good := g.Join("old"), g.Join("m3"), g.Join("good")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// term 1: old (from nothing); term 2 old again; term 3: m3, whose clone good acked 3/480
	l1 := mastership(t, old, "old", pos(0, 0), pos(1, 40))
	_ = l1.Release(ctx)
	l2 := mastership(t, old, "old", pos(1, 40), pos(2, 900))
	g.Kill("old") // kill -9; Nomad restarts it below
	time.Sleep(g.timing.LockDelay + 10*time.Millisecond)
	mastership(t, m3, "m3", pos(2, 900), pos(3, 480))
	if l2.Err() == nil {
		t.Fatal("the killed master's lease lives on")
	}

	goodM := newMember("good", pos(3, 500), true)
	if err := good.Publish(ctx, goodM.self()); err != nil {
		t.Fatal(err)
	}
	old = g.Join("old")
	oldM := newMember("old", pos(1, 0), true) // what its state file says
	var refused atomic.Bool
	cOld := campaignAs(ctx, old, oldM, func(d Decision) {
		if !d.Eligible && !d.Stalled { // good qualifies and lives: the group is not stuck
			refused.Store(true)
		}
	})

	g.Kill("m3") // term 3 ends by invalidation: lock-delay
	// good is slow: it campaigns only well after the lock-delay and old's rank delay ran out
	time.Sleep(g.timing.LockDelay*2 + g.timing.MaxRankDelay)
	select {
	case w := <-cOld:
		t.Fatalf("the stale former master took the lock (term %d, err %v)", termOf(w.lease), w.err)
	default:
	}
	if !refused.Load() {
		t.Fatal("the stale instance did not decide that it may not contend")
	}
	cGood := campaignAs(ctx, good, goodM, nil)
	w := expectWinner(t, "good", 3*time.Second, map[string]<-chan won{"old": cOld, "good": cGood})
	hw, _ := good.HighWater(ctx)
	if w.lease.Term() != 4 || hw.Position != pos(3, 500) || hw.Term != 4 {
		t.Fatalf("term %d, high-water %+v; want term 4 from 3/500", w.lease.Term(), hw)
	}
}

func termOf(l Lease) uint64 {
	if l == nil {
		return 0
	}
	return l.Term()
}

// A clone whose published candidacy is a second old must not lose to one that looks better
// only because it published more recently. While the master held the lock, a (at 3/100 when
// it published) moved to 3/200 and b (published 3/150) to 3/160; the master then releases
// (no lock-delay). b decides at once; a hears of the release 100ms later. Before the fix, b
// ranked itself first against a's old 3/100 and took the lock at once, and a's extra writes
// were overwritten.
func TestPromotionBetterCloneDoesNotLoseTheRace(t *testing.T) {
	g := NewMemory(memTiming())
	m, a, b := g.Join("m"), g.Join("a"), g.Join("b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lm := mastership(t, m, "m", pos(2, 10), pos(3, 90))
	am, bm := newMember("a", pos(3, 100), true), newMember("b", pos(3, 150), true)
	cA := campaignAs(ctx, slowWatch{a, 100 * time.Millisecond}, am, nil)
	cB := campaignAs(ctx, b, bm, nil)
	waitCands(t, a, 2)
	am.set(pos(3, 200), true) // not republished while the lock is held (at most once a second)
	bm.set(pos(3, 160), true)
	if err := lm.Mark(ctx, pos(3, 160)); err != nil {
		t.Fatal(err)
	}
	if err := lm.Release(ctx); err != nil {
		t.Fatal(err)
	}
	expectWinner(t, "a", 3*time.Second, map[string]<-chan won{"a": cA, "b": cB})
}

func waitCands(t *testing.T, l Leaser, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		cs, _ := l.Candidates(context.Background())
		if len(cs) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d candidacies, want %d", len(cs), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// After a session invalidation nobody can lock before the lock-delay ends; the ranking must
// not turn into a race at that instant. The best candidate's lock requests are slow (100ms);
// the second, behind it by one op, retries every RetryEvery. Before the fix the second's rank
// delay (shorter than the lock-delay) had run out and its fast request won.
func TestPromotionRankingIsNotARaceWithLockDelay(t *testing.T) {
	g := NewMemory(memTiming())
	m, best, second := g.Join("m"), g.Join("best"), g.Join("second")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mastership(t, m, "m", pos(4, 0), pos(5, 300))
	bm, sm := newMember("best", pos(5, 310), true), newMember("second", pos(5, 309), true)
	cBest := campaignAs(ctx, slowAcquire{best, 100 * time.Millisecond}, bm, nil)
	cSecond := campaignAs(ctx, second, sm, nil)
	waitCands(t, best, 2)
	g.Kill("m")
	expectWinner(t, "best", 5*time.Second, map[string]<-chan won{"best": cBest, "second": cSecond})
}

// Positions across terms: a clone still at the start of the new master's term (what it had
// when its master changed) stops qualifying as soon as the new master marks a position of its
// own term; a clone that synced with the new master qualifies with any seq of that term above
// the mark. The restarted clone is given the timing advantage.
func TestPromotionPositionsAcrossTerms(t *testing.T) {
	g := NewMemory(memTiming())
	m4, synced, restarted := g.Join("m4"), g.Join("synced"), g.Join("restarted")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// m4 was promoted from 3/1240: so was restarted's copy, which never reached m4
	l4 := mastership(t, m4, "m4", pos(3, 1240), pos(3, 1240))
	if why := Qualifies(Info{Position: pos(3, 1240), CaughtUp: true}, true, mustHW(t, m4)); why != "" {
		t.Fatalf("the new master's own start does not qualify: %s", why)
	}
	if err := l4.Mark(ctx, pos(4, 5)); err != nil { // synced acked 4/5
		t.Fatal(err)
	}
	sm, rm := newMember("synced", pos(4, 5), true), newMember("restarted", pos(3, 1240), true)
	if err := synced.Publish(ctx, sm.self()); err != nil {
		t.Fatal(err)
	}
	cR := campaignAs(ctx, restarted, rm, nil)
	waitCands(t, m4, 2)
	g.Kill("m4")
	time.Sleep(g.timing.LockDelay*2 + g.timing.MaxRankDelay)
	cS := campaignAs(ctx, synced, sm, nil)
	expectWinner(t, "synced", 3*time.Second, map[string]<-chan won{"restarted": cR, "synced": cS})

	for _, tc := range []struct {
		p    core.Position
		hw   core.Position
		want bool
	}{
		{pos(4, 0), pos(3, 1234), true},     // a later term holds every earlier published position
		{pos(3, 2000), pos(4, 0), false},    // an older term never holds a newer mark
		{pos(3, 1234), pos(3, 1234), true},  // exactly the mark
		{pos(3, 1233), pos(3, 1234), false}, // one op short
	} {
		got := Qualifies(Info{Position: tc.p, CaughtUp: true}, true, HighWater{Term: 4, Position: tc.hw}) == ""
		if got != tc.want {
			t.Errorf("Qualifies(%s against %s) = %v, want %v", tc.p, tc.hw, got, tc.want)
		}
	}
	if Qualifies(Info{Position: pos(9, 9)}, true, HighWater{Term: 4, Position: pos(4, 0)}) == "" {
		t.Error("an incomplete copy qualifies")
	}
}

func mustHW(t *testing.T, l Leaser) HighWater {
	t.Helper()
	hw, err := l.HighWater(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

// The rule holds in the lock itself, not only in Decide: an acquisition that does not qualify
// is refused with ErrBehind, and a deposed master cannot move the mark.
func TestPromotionAcquireEnforcesTheRule(t *testing.T) {
	g := NewMemory(memTiming())
	m, c := g.Join("m"), g.Join("c")
	ctx := context.Background()
	lm := mastership(t, m, "m", pos(1, 0), pos(2, 50))
	if err := lm.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, Info{ID: "c", Position: pos(2, 49), CaughtUp: true}); !errors.Is(err, ErrBehind) {
		t.Fatalf("acquisition behind the mark: %v, want ErrBehind", err)
	}
	if _, err := c.Acquire(ctx, Info{ID: "c", Position: pos(2, 50)}); !errors.Is(err, ErrBehind) {
		t.Fatalf("acquisition with an incomplete copy: %v, want ErrBehind", err)
	}
	if err := lm.Mark(ctx, pos(2, 99)); !errors.Is(err, ErrLost) {
		t.Fatalf("a released master marked: %v", err)
	}
	lc, err := c.Acquire(ctx, Info{ID: "c", Position: pos(2, 50), CaughtUp: true})
	if err != nil {
		t.Fatal(err)
	}
	if hw := mustHW(t, c); hw.Term != lc.Term() || hw.Position != pos(2, 50) {
		t.Fatalf("mark after acquisition %+v", hw)
	}
}

// When no live candidate qualifies, the group waits and says so; the instance that holds the
// mark (here the former master, back with its recorded head) is then promoted.
func TestPromotionWaitsForAQualifiedCandidate(t *testing.T) {
	g := NewMemory(memTiming())
	m, c := g.Join("m"), g.Join("c")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mastership(t, m, "m", pos(6, 70), pos(7, 30))
	g.Kill("m")
	var mu sync.Mutex
	var reasons []Decision
	cm := newMember("c", pos(7, 12), true)
	cC := campaignAs(ctx, c, cm, func(d Decision) {
		mu.Lock()
		reasons = append(reasons, d)
		mu.Unlock()
	})
	time.Sleep(g.timing.LockDelay*2 + g.timing.MaxRankDelay)
	select {
	case w := <-cC:
		t.Fatalf("a clone behind the mark was promoted (term %d, err %v)", termOf(w.lease), w.err)
	default:
	}
	mu.Lock()
	if len(reasons) == 0 || !reasons[len(reasons)-1].Stalled {
		t.Fatalf("decisions %+v: want the group reported waiting", reasons)
	}
	mu.Unlock()
	cands, _ := c.Candidates(ctx)
	if len(cands) != 1 || cands[0].Waiting == "" {
		t.Fatalf("the waiting candidate does not publish why: %+v", cands)
	}
	back := g.Join("m")
	cM := campaignAs(ctx, back, newMember("m", pos(7, 41), true), nil) // its recorded head
	expectWinner(t, "m", 3*time.Second, map[string]<-chan won{"c": cC, "m": cM})
}

// A better candidate that froze after republishing for the vacancy (its session lives on)
// holds the others back only for the lock-delay and their rank: a qualified one takes over.
func TestPromotionFrozenBestDoesNotBlockTheGroup(t *testing.T) {
	g := NewMemory(memTiming())
	m, frozen, next := g.Join("m"), g.Join("frozen"), g.Join("next")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lm := mastership(t, m, "m", pos(1, 0), pos(2, 40))
	if err := lm.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := frozen.Publish(ctx, Info{ID: "frozen", Position: pos(2, 50), CaughtUp: true, Vacant: lm.Term()}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w := expectWinner(t, "next", 5*time.Second, map[string]<-chan won{"next": campaignAs(ctx, next, newMember("next", pos(2, 45), true), nil)})
	took := w.at.Sub(start)
	tm := g.timing
	if want := time.Duration(float64(tm.LockDelay)*tm.Drift) + tm.RankDelay; took < want || took > want+time.Second {
		t.Fatalf("took over after %s, want about %s (lock-delay and one rank)", took, want)
	}
}
