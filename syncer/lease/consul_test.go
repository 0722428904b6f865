package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// One cluster for every Consul test: a dev server and three client agents with fast gossip so
// that a killed agent is declared failed in a couple of seconds. Every subtest uses its own
// group (its own keys); only SerfHealth kills an agent (client-3, used by no other subtest).
func TestConsul(t *testing.T) {
	t.Parallel()
	testutil.RequireConsul(t)
	c := consul.Start(t, consul.WithClients(3),
		consul.WithHCL(`gossip_lan { probe_interval = "200ms" probe_timeout = "100ms" suspicion_mult = 2 }`))
	env := &env{c: c}

	t.Run("AcquireTermsAndContention", env.acquireTerms)
	t.Run("ReleaseHandsOverPromptly", env.releaseHandover)
	t.Run("CrashedHolderTTLThenLockDelay", env.crashedHolder)
	t.Run("SessionDestroyedRightAfterRenewal", env.destroyedSession)
	t.Run("SerfHealthEndsSessionOfKilledAgent", env.serfHealth)
	t.Run("CandidatesOrdering", env.candidatesOrdering)
	t.Run("RenewalsKeepDeadlineAhead", env.renewals)
	t.Run("OneMasterAtATime", env.oneMasterAtATime)
	t.Run("HighWaterInTheLockTransaction", env.highWater)
}

type env struct {
	c     *consul.Cluster
	group atomic.Int64
}

func (e *env) newGroup() string { return fmt.Sprintf("g%d", e.group.Add(1)) }

func (e *env) leaser(t *testing.T, client int, group, id string, tm Timing) *Consul {
	t.Helper()
	return newConsul(t, ConsulConfig{
		Client: e.c.Clients[client].APIClient(t), Namespace: "default", Job: "job", Group: group, ID: id,
		Timing: tm, Logger: hclog.New(&hclog.LoggerOptions{Name: id, Level: hclog.Info, Output: testWriter{t}}),
	})
}

// newConsul starts a Consul leaser that the test's end closes.
func newConsul(t *testing.T, cfg ConsulConfig) *Consul {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := NewConsul(ctx, cfg)
	if err != nil {
		t.Fatalf("NewConsul(%s): %v", cfg.ID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Close(ctx)
	})
	return l
}

// crash simulates the death of the syncer process: renewals and watches stop, nothing is
// released and the session is not destroyed.
func crash(l *Consul) { l.cancel(); l.wg.Wait() }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // logging after the test ended
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func info(id string, seq uint64) Info {
	return Info{ID: id, Node: "node-" + id, Address: "10.0.0.1:7000", Position: core.Position{Term: 1, Seq: seq}, CaughtUp: true}
}

// pair starts two instances of a new group, a and b, on two client agents, with a context
// that ends within d.
func (e *env) pair(t *testing.T, tm Timing, d time.Duration) (context.Context, *Consul, *Consul) {
	t.Helper()
	g := e.newGroup()
	return ctxT(t, d), e.leaser(t, 0, g, "a", tm), e.leaser(t, 1, g, "b", tm)
}

// mustAcquire takes the lock for info or fails the test.
func mustAcquire(ctx context.Context, t *testing.T, l Leaser, info Info) Lease {
	t.Helper()
	ls, err := l.Acquire(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) acquireTerms(t *testing.T) {
	t.Parallel()
	g := e.newGroup()
	a := e.leaser(t, 0, g, "a", Timing{})
	b := e.leaser(t, 1, g, "b", Timing{})
	ctx := ctxT(t, 30*time.Second)

	w := b.Watch(ctx)
	if h := <-w; h.Held || h.Term != 0 {
		t.Fatalf("fresh key: %+v", h)
	}

	la, err := a.Acquire(ctx, info("a", 10))
	if err != nil {
		t.Fatalf("a acquire: %v", err)
	}
	if la.Term() != 1 {
		t.Fatalf("first term = %d, want 1", la.Term())
	}
	if !time.Now().Before(la.Deadline()) {
		t.Fatal("deadline already past")
	}
	if _, err := b.Acquire(ctx, info("b", 10)); !errors.Is(err, ErrHeld) {
		t.Fatalf("b acquire while a holds: %v, want ErrHeld", err)
	}
	// the key holds a's info with the term, and LockIndex agrees
	kv, _, err := e.c.Client().KV().Get(a.LeaderKey(), nil)
	if err != nil || kv == nil {
		t.Fatalf("get key: %v %v", kv, err)
	}
	var got Info
	if err := json.Unmarshal(kv.Value, &got); err != nil || got.ID != "a" || got.Term != 1 || got.Position.Seq != 10 || kv.LockIndex != 1 {
		t.Fatalf("key value %s (lock index %d): %v", kv.Value, kv.LockIndex, err)
	}
	h := waitHolder(t, w, func(h Holder) bool { return h.Held })
	if h.Info.ID != "a" || h.Term != 1 || h.Session != a.Session() {
		t.Fatalf("watch saw %+v", h)
	}
	if err := la.Update(ctx, info("a", 11)); err != nil {
		t.Fatalf("update: %v", err)
	}
	if h := waitHolder(t, w, func(h Holder) bool { return h.Info.Position.Seq == 11 }); h.Term != 1 {
		t.Fatalf("update changed the term: %+v", h)
	}

	if err := la.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	if !errors.Is(la.Err(), ErrLost) {
		t.Fatalf("released lease err = %v", la.Err())
	}
	if h := waitHolder(t, w, func(h Holder) bool { return !h.Held }); h.Term != 1 {
		t.Fatalf("after release: %+v", h)
	}
	lb, err := b.Acquire(ctx, info("b", 11))
	if err != nil {
		t.Fatalf("b acquire after release: %v", err)
	}
	if lb.Term() != 2 {
		t.Fatalf("second term = %d, want 2", lb.Term())
	}
	// a re-acquires after b: term 3
	if err := lb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	la2, err := a.Acquire(ctx, info("a", 12))
	if err != nil || la2.Term() != 3 {
		t.Fatalf("third acquisition: %v, %v", la2, err)
	}
	// b's watch sees the new term; a's Close releases (no lock-delay) so b takes over at once
	if err := a.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	lb2, err := b.Acquire(ctx, info("b", 12))
	if err != nil || lb2.Term() != 4 {
		t.Fatalf("acquire after Close: %v, %v", lb2, err)
	}
}

func waitHolder(t *testing.T, w <-chan Holder, ok func(Holder) bool) Holder {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case h, open := <-w:
			if !open {
				t.Fatal("watch closed")
			}
			if ok(h) {
				return h
			}
		case <-timeout:
			t.Fatal("watch: condition not reached")
		}
	}
}

// campaign runs Campaign in the background and reports the lease and when it was obtained.
type won struct {
	lease Lease
	at    time.Time
	err   error
}

func campaign(ctx context.Context, l Leaser, self Info) <-chan won {
	ch := make(chan won, 1)
	go func() {
		ls, err := Campaign(ctx, l, func() Info { return self }, nil)
		ch <- won{ls, time.Now(), err}
	}()
	return ch
}

func (e *env) releaseHandover(t *testing.T) {
	t.Parallel()
	g := e.newGroup()
	a := e.leaser(t, 0, g, "a", Timing{})
	b := e.leaser(t, 1, g, "b", Timing{})
	c := e.leaser(t, 0, g, "c", Timing{}) // client-3 (index 2) belongs to SerfHealth
	ctx := ctxT(t, 30*time.Second)
	// a wins by campaigning, so that its candidacy is live like a real master's
	ra := <-campaign(ctx, a, info("a", 0))
	if ra.err != nil {
		t.Fatal(ra.err)
	}
	wb := campaign(ctx, b, info("b", 50))
	testutil.WaitFor(t, 5*time.Second, func() bool { cs, _ := a.Candidates(ctx); return len(cs) == 2 })

	// graceful stop: Close withdraws, releases (no lock-delay) and ends the session
	start := time.Now()
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rb := <-wb
	if rb.err != nil {
		t.Fatal(rb.err)
	}
	took := rb.at.Sub(start)
	t.Logf("handover after a graceful stop: %s (term %d → %d)", took.Round(time.Millisecond), ra.lease.Term(), rb.lease.Term())
	if took > 500*time.Millisecond {
		t.Fatalf("handover after a graceful stop took %s, want < 500ms (no lock-delay, no rank delay)", took)
	}
	if rb.lease.Term() != ra.lease.Term()+1 {
		t.Fatalf("term %d after %d", rb.lease.Term(), ra.lease.Term())
	}

	// step down and stay a clone: withdraw, then release; c (synced with b, less caught up
	// than b, at or above the mark b's acquisition set) takes over without waiting for b's
	// better but withdrawn candidacy
	bAt := info("b", 30)
	bAt.Position.Term = rb.lease.Term()
	if err := b.Publish(ctx, bAt); err != nil {
		t.Fatal(err)
	}
	cAt := info("c", 10)
	cAt.Position.Term = rb.lease.Term()
	wc := campaign(ctx, c, cAt)
	testutil.WaitFor(t, 5*time.Second, func() bool { cs, _ := b.Candidates(ctx); return len(cs) == 2 })
	start = time.Now()
	if err := b.Withdraw(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rb.lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	rc := <-wc
	if rc.err != nil {
		t.Fatal(rc.err)
	}
	took = rc.at.Sub(start)
	t.Logf("handover after a step-down: %s (term %d → %d)", took.Round(time.Millisecond), rb.lease.Term(), rc.lease.Term())
	if took > 500*time.Millisecond {
		t.Fatalf("handover after a step-down took %s", took)
	}
}

// The holder dies without releasing: Consul expires its session after 2·TTL, then lock-delay
// runs; the contender gets the lock only after both, and never before the dead holder's
// deadline + stop budget.
func (e *env) crashedHolder(t *testing.T) {
	t.Parallel()
	tm := DefaultTiming()
	ctx, a, b := e.pair(t, tm, 60*time.Second)
	la := mustAcquire(ctx, t, a, info("a", 1))
	time.Sleep(2 * time.Second) // a few renewals
	crash(a)
	died := time.Now()
	deadline := la.Deadline()
	if !deadline.After(died) {
		t.Fatalf("holder's deadline %s before its death", deadline.Sub(died))
	}
	wb := campaign(ctx, b, info("b", 1))
	r := <-wb
	if r.err != nil {
		t.Fatal(r.err)
	}
	lastRenewSent := deadline.Add(-tm.Validity())
	took := r.at.Sub(died)
	t.Logf("takeover after holder death: %s (last renewal %s before death; deadline was %s after death; term %d → %d)",
		took.Round(time.Millisecond), died.Sub(lastRenewSent).Round(time.Millisecond),
		deadline.Sub(died).Round(time.Millisecond), la.Term(), r.lease.Term())
	if fence := deadline.Add(tm.StopBudget); !r.at.After(fence) {
		t.Fatalf("contender held the lock %s before the old holder's app was fenced", fence.Sub(r.at))
	}
	// Consul: not before TTL (contract) + lock-delay after the last renewal
	if floor := tm.TTL + tm.LockDelay; r.at.Sub(lastRenewSent) < floor {
		t.Fatalf("takeover %s after the last renewal, want ≥ TTL + lock-delay = %s", r.at.Sub(lastRenewSent), floor)
	}
	if ceil := tm.WorstTakeover() + 2*time.Second; took > ceil {
		t.Fatalf("takeover took %s, want ≤ %s", took, ceil)
	}
}

// The tightest case of the safety argument: the holder's session is invalidated (here by an
// operator's destroy; serfHealth does the same) right after a successful renewal. Only
// lock-delay protects; the contender must still get the lock after deadline + stop budget.
func (e *env) destroyedSession(t *testing.T) {
	t.Parallel()
	tm := DefaultTiming()
	ctx, a, b := e.pair(t, tm, 30*time.Second)
	la := mustAcquire(ctx, t, a, info("a", 1))
	// wait for a renewal, then destroy the session at once
	select {
	case <-la.Renewed():
	case <-time.After(5 * time.Second):
		t.Fatal("no renewal")
	}
	deadline := la.Deadline()
	destroyed := time.Now()
	if _, err := e.c.Client().Session().Destroy(a.Session(), nil); err != nil {
		t.Fatal(err)
	}
	// hammer acquisitions to find the earliest instant Consul allows
	var got Lease
	var at time.Time
	attempts := 0
	for got == nil {
		attempts++
		ls, err := b.Acquire(ctx, info("b", 1))
		switch {
		case err == nil:
			got, at = ls, time.Now()
		case errors.Is(err, ErrHeld):
			time.Sleep(10 * time.Millisecond)
		default:
			t.Fatal(err)
		}
	}
	slack := at.Sub(deadline.Add(tm.StopBudget))
	t.Logf("session destroyed %s after a renewal's send; contender locked %s later (%d attempts); "+
		"slack after old deadline + stop budget: %s",
		destroyed.Sub(deadline.Add(-tm.Validity())).Round(time.Millisecond), at.Sub(destroyed).Round(time.Millisecond),
		attempts, slack.Round(time.Millisecond))
	if slack <= 0 {
		t.Fatalf("contender held the lock %s before the old holder was fenced", -slack)
	}
	if at.Sub(destroyed) < tm.LockDelay-50*time.Millisecond {
		t.Fatalf("lock-delay not applied: locked %s after the destroy", at.Sub(destroyed))
	}
	// the old holder learns it lost (watch or renewal)
	select {
	case <-la.Done():
		if !errors.Is(la.Err(), ErrLost) {
			t.Fatalf("lost lease err = %v", la.Err())
		}
	case <-time.After(3 * time.Second):
		t.Fatal("old holder did not notice the loss")
	}
	if la.Deadline().After(time.Now()) {
		t.Fatal("lost lease still has a deadline ahead")
	}
	// and its Leaser recovers with a new session
	testutil.WaitFor(t, 5*time.Second, func() bool { return a.Session() != "" && a.Session() != got.(*consulLease).session })
}

// Killing the holder's agent (node loss) ends its session through serfHealth, long before the
// TTL would: the holder's TTL here is 20s (Consul would wait 40s).
func (e *env) serfHealth(t *testing.T) {
	t.Parallel()
	g := e.newGroup()
	slow := Timing{TTL: 20 * time.Second, LockDelay: 2 * time.Second}
	a := e.leaser(t, 2, g, "a", slow)
	b := e.leaser(t, 1, g, "b", Timing{})
	ctx := ctxT(t, 60*time.Second)
	la := mustAcquire(ctx, t, a, info("a", 1))
	session := a.Session()
	wb := campaign(ctx, b, info("b", 1))
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	deadline := la.Deadline()
	e.c.KillClient(2)
	r := <-wb
	if r.err != nil {
		t.Fatal(r.err)
	}
	took := r.at.Sub(killed)
	t.Logf("takeover after the holder's agent was killed: %s (term %d → %d)", took.Round(time.Millisecond), la.Term(), r.lease.Term())
	if se, _, err := e.c.Client().Session().Info(session, nil); err != nil || se != nil {
		t.Fatalf("killed node's session still there: %+v %v", se, err)
	}
	if !r.at.After(deadline.Add(slow.StopBudget)) {
		t.Fatal("takeover before the old holder's deadline")
	}
	if took > 15*time.Second {
		t.Fatalf("takeover took %s: serfHealth did not end the session", took)
	}
	// the holder (its agent gone) cannot renew: its lease ends no later than its deadline
	// passes, and it notices the loss once renewals have failed for a TTL
	if time.Now().Before(la.Deadline()) {
		t.Fatal("holder without its agent still has a deadline ahead")
	}
}

// The most caught-up candidate wins a free lock; a lagging one takes over, after its rank
// delay, when the best is dead (its candidacy still live because its session has not expired).
func (e *env) candidatesOrdering(t *testing.T) {
	t.Parallel()
	g := e.newGroup()
	tm := DefaultTiming()
	m := e.leaser(t, 0, g, "m", tm)
	best := e.leaser(t, 1, g, "best", tm)
	lag := e.leaser(t, 0, g, "lag", tm)
	ctx := ctxT(t, 60*time.Second)

	lm, err := m.Acquire(ctx, info("m", 0))
	if err != nil {
		t.Fatal(err)
	}
	// lag is at 1/40 while m holds the lock, then catches up with the next master's start
	// (as a clone resyncing with it would, at 2/0): qualified, yet ranked behind best's
	// candidacy until best republishes it for the vacancy.
	var lagPos atomic.Value
	lagPos.Store(info("lag", 40))
	cLag := make(chan won, 1)
	go func() {
		ls, err := Campaign(ctx, lag, func() Info { return lagPos.Load().(Info) }, nil)
		cLag <- won{ls, time.Now(), err}
	}()
	cBest := campaign(ctx, best, info("best", 49))
	testutil.WaitFor(t, 5*time.Second, func() bool {
		cs, _ := m.Candidates(ctx)
		return len(cs) == 2
	})
	cs, _ := m.Candidates(ctx)
	d := Decide(info("lag", 40), Vacancy{Term: lm.Term(), HighWater: HighWater{Term: lm.Term(), Position: info("m", 0).Position}}, cs, tm)
	if d.Rank != 1 {
		t.Fatalf("lag's decision %+v from %+v", d, cs)
	}
	if err := lm.Release(ctx); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	var rb won
	select {
	case rb = <-cBest:
	case r := <-cLag:
		t.Fatalf("lagging candidate won (after %s): %v", r.at.Sub(released), r.err)
	}
	if rb.err != nil {
		t.Fatal(rb.err)
	}
	t.Logf("best candidate took over %s after release", rb.at.Sub(released).Round(time.Millisecond))

	// the best one hands back; now it "dies" silently (its candidacy stays live until its
	// session expires): the lagging one, caught up, takes over at once — the candidacy the
	// last holder published before it became master says nothing about its copy now, and it
	// did not republish for the vacancy (see Vacancy.Holder)
	synced := info("lag", 0)
	synced.Position = core.Position{Term: rb.lease.Term(), Seq: 0}
	lagPos.Store(synced)
	if err := rb.lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	crash(best)
	r := <-cLag
	if r.err != nil {
		t.Fatal(r.err)
	}
	took := r.at.Sub(freed)
	t.Logf("lagging candidate took over %s after the lock was freed by a dead best candidate", took.Round(time.Millisecond))
	if took > tm.RankDelay {
		t.Fatalf("lagging takeover after %s: it waited for the last holder's leftover candidacy", took)
	}
}

// A master's deadline keeps moving ahead while it holds the lock.
func (e *env) renewals(t *testing.T) {
	t.Parallel()
	g := e.newGroup()
	a := e.leaser(t, 0, g, "a", Timing{})
	ctx := ctxT(t, 20*time.Second)
	la := mustAcquire(ctx, t, a, info("a", 1))
	end := time.Now().Add(3 * time.Second)
	minLeft := time.Hour
	for time.Now().Before(end) {
		left := time.Until(la.Deadline())
		minLeft = min(minLeft, left)
		if left <= 0 {
			t.Fatalf("deadline passed while holding: %s", left)
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Logf("minimum time left before the deadline over 3s of holding: %s", minLeft.Round(time.Millisecond))
	if la.Err() != nil {
		t.Fatal(la.Err())
	}
}

// A Consul with its default session_ttl_min (10s) refuses the 3s TTL: the error says what to do.
// TestConsulRaisesARefusedTTL: on a Consul whose servers refuse the 3s TTL, the lease runs with
// the smallest TTL they allow and says so.
func TestConsulRaisesARefusedTTL(t *testing.T) {
	t.Parallel()
	testutil.RequireConsul(t)
	c := consul.Start(t, consul.WithSessionTTLMin(10*time.Second))
	var asked, used time.Duration
	l, err := NewConsul(ctxT(t, 10*time.Second), ConsulConfig{
		Client: c.Client(), Namespace: "default", Job: "job", Group: "g", ID: "a",
		OnTTLRaised: func(a, u time.Duration) { asked, used = a, u },
	})
	if err != nil {
		t.Fatalf("a stock Consul's session_ttl_min must not stop the syncer: %v", err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	if asked != DefaultTiming().TTL || used != 10*time.Second || l.Timing().TTL != 10*time.Second {
		t.Fatalf("TTL raised from %s to %s (timing %s), want from the default to the servers' 10s", asked, used, l.Timing().TTL)
	}
	// The fence does not depend on the TTL: the deadline's validity is the lock-delay's.
	if l.Timing().Validity() != DefaultTiming().Validity() {
		t.Fatalf("validity %s changed with the TTL (was %s)", l.Timing().Validity(), DefaultTiming().Validity())
	}
	info, _, err := c.Client().Session().Info(l.Session(), nil)
	if err != nil || info == nil || info.TTL != "10s" {
		t.Fatalf("the session Consul holds: %+v, %v; want TTL 10s", info, err)
	}
}

// TestRefusedTTLMin reads the allowed range from Consul's refusal.
func TestRefusedTTLMin(t *testing.T) {
	refusal := fmt.Errorf("lease: %w 3s: set session_ttl_min: %w", ErrTTLRefused,
		errors.New("Unexpected response code: 500 (Invalid Session TTL '3000000000', must be between [10s=24h0m0s])"))
	if d, ok := refusedTTLMin(refusal); !ok || d != 10*time.Second {
		t.Fatalf("got %s, %v", d, ok)
	}
	if _, ok := refusedTTLMin(errors.New("connection refused")); ok {
		t.Fatal("an unrelated error read as a refusal")
	}
}

func TestNewConsulRejectsBadConfig(t *testing.T) {
	ctx := ctxT(t, time.Second)
	if _, err := NewConsul(ctx, ConsulConfig{}); err == nil {
		t.Fatal("no client accepted")
	}
	cl, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewConsul(ctx, ConsulConfig{Client: cl, Namespace: "n", Job: "j", ID: "a"}); err == nil {
		t.Fatal("missing group accepted")
	}
	bad := DefaultTiming()
	bad.LockDelay = 0
	bad.StopBudget = time.Second
	if _, err := NewConsul(ctx, ConsulConfig{Client: cl, Namespace: "n", Job: "j", Group: "g", ID: "a", Timing: bad}); err == nil {
		t.Fatal("unsafe timing accepted")
	}
}

func TestKeyPrefix(t *testing.T) {
	if got := KeyPrefix("", "default", "web/app", "g 1"); got != "bedrock/default/web%2Fapp/g%201" {
		t.Fatalf("KeyPrefix = %q", got)
	}
}

// The local agent hangs (SIGSTOP) while this instance is master. Shorter than the TTL: the
// renewals fail and time out, the deadline lapses (the app must stop), and once the agent is
// back a renewal succeeds and the same lease (same term) gets a deadline ahead again. Longer
// than the TTL: the Leaser presumes its session gone, ends the lease with ErrLost and gets a
// new session when the agent is back. Slow gossip, so that a pause of a few seconds does not
// get the node declared failed (serfHealth would end the session: see SerfHealth).
func TestConsulAgentHang(t *testing.T) {
	t.Parallel()
	testutil.RequireConsul(t)
	// the dev server gossips fast (a node silent ~1s is failed); slow it to production-like
	// timing so that a short hang is a hang, not a node loss
	c := consul.Start(t, consul.WithClients(1),
		consul.WithHCL(`gossip_lan { probe_interval = "1s" probe_timeout = "500ms" suspicion_mult = 6 }`))
	e := &env{c: c}
	tm := DefaultTiming()
	a := e.leaser(t, 0, "hang", "a", tm)
	ctx := ctxT(t, 60*time.Second)
	la := mustAcquire(ctx, t, a, info("a", 1))
	time.Sleep(time.Second)

	// shorter than the TTL
	c.PauseClient(0)
	paused := time.Now()
	time.Sleep(tm.Validity() + 300*time.Millisecond)
	if left := time.Until(la.Deadline()); left > 0 {
		t.Fatalf("deadline still %s ahead with the agent hung for %s", left, time.Since(paused))
	}
	if la.Err() != nil {
		t.Fatalf("lease ended before the TTL: %v", la.Err())
	}
	select { // drop the renewal from before the pause
	case <-la.Renewed():
	default:
	}
	c.ResumeClient(0)
	resumed := time.Now()
	select {
	case d := <-la.Renewed():
		t.Logf("agent hung %s: deadline lapsed, renewed %s after resume (%s ahead)",
			resumed.Sub(paused).Round(time.Millisecond), time.Since(resumed).Round(time.Millisecond), time.Until(d).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatalf("no renewal after resume: %v", la.Err())
	}
	if la.Err() != nil || time.Until(la.Deadline()) <= 0 {
		t.Fatalf("lease after resume: err %v, deadline %s", la.Err(), time.Until(la.Deadline()))
	}
	kv, _, err := c.Client().KV().Get(a.LeaderKey(), nil)
	if err != nil || kv == nil || kv.Session != a.Session() || kv.LockIndex != la.Term() {
		t.Fatalf("key after resume: %+v %v", kv, err)
	}

	// longer than the TTL
	old := a.Session()
	time.Sleep(time.Second)
	c.PauseClient(0)
	paused = time.Now()
	select {
	case <-la.Done():
		t.Logf("agent hung: lease given up %s after the pause: %v", time.Since(paused).Round(time.Millisecond), la.Err())
	case <-time.After(tm.TTL + 2*time.Second):
		c.ResumeClient(0)
		t.Fatal("lease not given up after a TTL without renewal")
	}
	if !errors.Is(la.Err(), ErrLost) {
		t.Fatalf("err = %v", la.Err())
	}
	c.ResumeClient(0)
	testutil.WaitFor(t, 10*time.Second, func() bool { return a.Session() != old })
}

// The promotion rule is enforced by the lock transaction itself on a real Consul: the
// acquisition writes the mark, only the holder can raise it (a deposed one is refused by
// KVCheckSession), a candidate behind it or incomplete is refused with ErrBehind, and
// ReadGroup shows it to the status command.
func (e *env) highWater(t *testing.T) {
	t.Parallel()
	g := e.newGroup()
	a := e.leaser(t, 0, g, "a", Timing{})
	b := e.leaser(t, 1, g, "b", Timing{})
	ctx := ctxT(t, 20*time.Second)
	if hw, err := a.HighWater(ctx); err != nil || hw.Set() {
		t.Fatalf("a new group's mark: %+v, %v", hw, err)
	}
	la, err := a.Acquire(ctx, info("a", 0))
	if err != nil {
		t.Fatal(err)
	}
	if hw, err := b.HighWater(ctx); err != nil || hw.Term != la.Term() || hw.Position != info("a", 0).Position {
		t.Fatalf("mark after the acquisition: %+v, %v", hw, err)
	}
	at := func(seq uint64) core.Position { return core.Position{Term: la.Term(), Seq: seq} }
	for _, p := range []core.Position{at(7), at(5)} { // a lower mark is ignored
		if err := la.Mark(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if hw, _ := b.HighWater(ctx); hw.Position != at(7) {
		t.Fatalf("mark %+v, want %s", hw, at(7))
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := la.Mark(ctx, at(9)); !errors.Is(err, ErrLost) {
		t.Fatalf("a released master marked: %v", err)
	}
	behind := Info{ID: "b", Position: at(6), CaughtUp: true}
	if _, err := b.Acquire(ctx, behind); !errors.Is(err, ErrBehind) {
		t.Fatalf("acquisition at %s behind the mark: %v, want ErrBehind", behind.Position, err)
	}
	incomplete := Info{ID: "b", Position: at(8)}
	if _, err := b.Acquire(ctx, incomplete); !errors.Is(err, ErrBehind) {
		t.Fatalf("incomplete copy: %v, want ErrBehind", err)
	}
	lb, err := b.Acquire(ctx, Info{ID: "b", Position: at(7), CaughtUp: true})
	if err != nil {
		t.Fatal(err)
	}
	// a deposed holder's stale lease object cannot move the mark either
	if err := la.Mark(ctx, at(100)); err == nil {
		t.Fatal("the deposed master marked")
	}
	st, err := ReadGroup(ctx, e.c.Client(), a.prefix)
	if err != nil {
		t.Fatal(err)
	}
	if st.HighWater.Term != lb.Term() || st.HighWater.Position != at(7) || st.HighWaterError != "" {
		t.Fatalf("ReadGroup's mark: %+v (%s)", st.HighWater, st.HighWaterError)
	}
}
