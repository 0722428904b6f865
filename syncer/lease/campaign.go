package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
)

// publishEvery limits how often a changing position is republished while campaigning; a change
// of the caught-up flag is published at once.
const publishEvery = time.Second

// Campaign blocks until this instance holds the lock or ctx ends. self returns this instance's
// current info (position, caught-up flag); it is published as the candidacy and written into
// the lock key on success.
//
// While the lock is free, Decide orders the live candidates: the most caught-up one tries at
// once and the others after their rank delay, counted from the moment this instance saw the
// lock free. A refused attempt (another won, or the lock-delay left by a dead holder is still
// running) is retried every RetryEvery, so the takeover happens within RetryEvery of the
// lock-delay's end.
func Campaign(ctx context.Context, l Leaser, self func() Info, log hclog.Logger) (Lease, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	t := l.Timing()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch := l.Watch(wctx)
	tick := time.NewTicker(t.RetryEvery)
	defer tick.Stop()

	var (
		h          Holder
		have       bool
		freeSince  time.Time
		pub        Info
		pubAt      time.Time
		published  bool
		lastReason string
		lastErr    string // failures repeat every RetryEvery: log each kind once
	)
	warn := func(msg string, err error) {
		if err.Error() != lastErr {
			lastErr = err.Error()
			log.Warn(msg, "error", err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lease: campaign: %w", ctx.Err())
		case nh, ok := <-watch:
			if !ok {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("lease: campaign: %w", ctx.Err())
				}
				return nil, fmt.Errorf("lease: campaign: %w", ErrClosed)
			}
			h, have = nh, true
			if h.Held {
				freeSince = time.Time{}
			} else if freeSince.IsZero() {
				freeSince = time.Now()
			}
		case <-tick.C:
		}

		me := self()
		if !published || me.CaughtUp != pub.CaughtUp || (me != pub && time.Since(pubAt) >= publishEvery) {
			if err := l.Publish(ctx, me); err != nil {
				if errors.Is(err, ErrClosed) {
					return nil, fmt.Errorf("lease: campaign: %w", err)
				}
				warn("publishing candidacy failed", err)
			} else {
				pub, pubAt, published = me, time.Now(), true
			}
		}
		if !have || h.Held {
			continue
		}
		cands, err := l.Candidates(ctx)
		if err != nil {
			warn("listing candidates failed", err)
			continue
		}
		d := Decide(me, h.Term > 0, cands, t)
		if d.Reason != lastReason {
			log.Info("lock is free", "term", h.Term, "decision", d.Reason)
			lastReason = d.Reason
		}
		if !d.Eligible || time.Since(freeSince) < d.Delay {
			continue
		}
		ls, err := l.Acquire(ctx, me)
		// The next try is a full RetryEvery away, even when a tick was
		// already due: a watch event followed by a pending tick would
		// otherwise retry at once into the same lock-delay.
		tick.Reset(t.RetryEvery)
		switch {
		case err == nil:
			return ls, nil
		case errors.Is(err, ErrHeld):
			log.Debug("acquisition refused; retrying", "error", err)
		case errors.Is(err, ErrClosed):
			return nil, fmt.Errorf("lease: campaign: %w", err)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("lease: campaign: %w", ctx.Err())
		default:
			warn("acquisition failed; retrying", err)
		}
	}
}
