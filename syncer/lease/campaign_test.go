package lease

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// fakeLeaser is an in-memory Leaser: one key, lock-delay simulated by a refusal count.
type fakeLeaser struct {
	mu        sync.Mutex
	timing    Timing
	holder    Holder
	watch     chan Holder
	refuse    int // refuse this many acquisitions with ErrHeld (lock-delay)
	attempts  []time.Time
	cands     []Candidate
	published []Info
	closed    bool
}

func newFake(h Holder) *fakeLeaser {
	t := DefaultTiming()
	t.RetryEvery = 10 * time.Millisecond
	t.RankDelay = 200 * time.Millisecond
	f := &fakeLeaser{timing: t, holder: h, watch: make(chan Holder, 1)}
	f.watch <- h
	return f
}

func (f *fakeLeaser) set(h Holder) {
	f.mu.Lock()
	f.holder = h
	f.mu.Unlock()
	sendLatest(f.watch, h)
}

func (f *fakeLeaser) Acquire(_ context.Context, info Info) (Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts = append(f.attempts, time.Now())
	if f.closed {
		return nil, ErrClosed
	}
	if f.holder.Held || f.refuse > 0 {
		f.refuse--
		return nil, ErrHeld
	}
	return &fakeLease{term: f.holder.Term + 1}, nil
}

func (f *fakeLeaser) Watch(ctx context.Context) <-chan Holder {
	out := make(chan Holder, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case h, ok := <-f.watch:
				if !ok {
					return
				}
				sendLatest(out, h)
			}
		}
	}()
	return out
}

func (f *fakeLeaser) Publish(_ context.Context, info Info) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published = append(f.published, info)
	return nil
}

func (f *fakeLeaser) Withdraw(context.Context) error { return nil }

func (f *fakeLeaser) Candidates(context.Context) ([]Candidate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Candidate(nil), f.cands...), nil
}

func (f *fakeLeaser) Timing() Timing { return f.timing }

func (f *fakeLeaser) HighWater(context.Context) (HighWater, error) { return HighWater{}, nil }

func (f *fakeLeaser) Close(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		close(f.watch)
	}
	return nil
}

type fakeLease struct{ term uint64 }

func (l *fakeLease) Term() uint64                              { return l.term }
func (l *fakeLease) Deadline() time.Time                       { return time.Now().Add(time.Second) }
func (l *fakeLease) Renewed() <-chan time.Time                 { return nil }
func (l *fakeLease) Done() <-chan struct{}                     { return nil }
func (l *fakeLease) Err() error                                { return nil }
func (l *fakeLease) Update(context.Context, Info) error        { return nil }
func (l *fakeLease) Release(context.Context) error             { return nil }
func (l *fakeLease) Mark(context.Context, core.Position) error { return nil }

func selfInfo(id string, seq uint64) func() Info {
	return func() Info { return Info{ID: id, Position: core.Position{Term: 2, Seq: seq}, CaughtUp: true} }
}

func TestCampaignWaitsWhileHeldThenRetriesThroughLockDelay(t *testing.T) {
	f := newFake(Holder{Held: true, Term: 2, Session: "x"})
	f.refuse = 5
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan Lease, 1)
	go func() {
		ls, err := Campaign(ctx, f, selfInfo("a", 10), nil)
		if err != nil {
			t.Error(err)
		}
		done <- ls
	}()
	time.Sleep(100 * time.Millisecond)
	f.mu.Lock()
	n := len(f.attempts)
	f.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d acquisitions while the lock is held", n)
	}
	f.set(Holder{Term: 2}) // holder gone; lock-delay refuses 5 times
	ls := <-done
	if ls == nil || ls.Term() != 3 {
		t.Fatalf("lease %v", ls)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.attempts) != 6 {
		t.Fatalf("%d attempts, want 6 (5 refused)", len(f.attempts))
	}
	for i := 1; i < len(f.attempts); i++ {
		if gap := f.attempts[i].Sub(f.attempts[i-1]); gap < 5*time.Millisecond {
			t.Fatalf("retries not paced: %s", gap)
		}
	}
	if len(f.published) == 0 || f.published[0].ID != "a" {
		t.Fatalf("candidacy not published: %+v", f.published)
	}
}

func TestCampaignRankDelay(t *testing.T) {
	f := newFake(Holder{Term: 4})
	f.cands = []Candidate{{Info: Info{ID: "best", Position: core.Position{Term: 2, Seq: 99}, CaughtUp: true}, Live: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	ls, err := Campaign(ctx, f, selfInfo("a", 10), nil)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < f.timing.RankDelay || ls.Term() != 5 {
		t.Fatalf("acquired after %s (rank delay %s), term %d", took, f.timing.RankDelay, ls.Term())
	}
}

func TestCampaignIneligibleNeverAcquires(t *testing.T) {
	f := newFake(Holder{Term: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Campaign(ctx, f, func() Info { return Info{ID: "a"} }, nil) // not caught up
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.attempts) != 0 {
		t.Fatalf("incomplete copy tried to acquire %d times", len(f.attempts))
	}
}

func TestCampaignEndsWhenLeaserCloses(t *testing.T) {
	f := newFake(Holder{Held: true, Term: 1, Session: "x"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = f.Close(context.Background())
	}()
	if _, err := Campaign(ctx, f, selfInfo("a", 1), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}
