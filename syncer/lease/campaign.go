package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
)

// publishEvery limits how often a changing position is republished while a master holds the
// lock (the ranking does not use those copies: see Decide); while the lock is free, and on a
// change of the caught-up flag or of the vacancy, it is republished at once.
const publishEvery = time.Second

// CampaignConfig configures CampaignWith.
type CampaignConfig struct {
	// Self returns this instance's current info (position, caught-up flag); it is published
	// as the candidacy and written into the lock key on success.
	Self func() Info
	// Logger receives the decisions (default: no logs).
	Logger hclog.Logger
	// OnDecision, if set, is told every new decision while the lock is free (each time the
	// reason changes), e.g. to announce that the group waits for a qualified candidate.
	OnDecision func(Decision)
}

// Campaign is CampaignWith without a decision observer.
func Campaign(ctx context.Context, l Leaser, self func() Info, log hclog.Logger) (Lease, error) {
	return CampaignWith(ctx, l, CampaignConfig{Self: self, Logger: log})
}

// CampaignWith blocks until this instance holds the lock or ctx ends.
//
// While the lock is free, every iteration (each watch event and every RetryEvery) reads the
// high-water mark and the candidacies, republishes this instance's current position stamped
// with the vacancy (Info.Vacant) when it changed, and lets Decide say whether and when to
// contend; the rank delay counts from the moment this instance saw the lock free. A refused
// attempt (another won, the lock-delay left by a dead holder is still running, or the mark
// moved) is retried every RetryEvery, so the takeover happens within RetryEvery of the
// lock-delay's end.
func CampaignWith(ctx context.Context, l Leaser, cfg CampaignConfig) (Lease, error) {
	log := cfg.Logger
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
	publish := func(me Info, free bool) error {
		due := !published || me.CaughtUp != pub.CaughtUp || me.Vacant != pub.Vacant || me.Waiting != pub.Waiting ||
			(me != pub && (free || time.Since(pubAt) >= publishEvery))
		if !due {
			return nil
		}
		if err := l.Publish(ctx, me); err != nil {
			if errors.Is(err, ErrClosed) {
				return fmt.Errorf("lease: campaign: %w", err)
			}
			warn("publishing candidacy failed", err)
			return nil
		}
		pub, pubAt, published = me, time.Now(), true
		return nil
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

		me := cfg.Self()
		free := have && !h.Held
		if !free {
			lastReason = ""
			if err := publish(me, false); err != nil {
				return nil, err
			}
			continue
		}
		me.Vacant = h.Term
		// Publish the current position first: the others rank on it.
		if err := publish(withWaiting(me, pub.Waiting), true); err != nil {
			return nil, err
		}
		hw, err := l.HighWater(ctx)
		if err != nil {
			warn("reading the high-water mark failed", err)
			continue
		}
		cands, err := l.Candidates(ctx)
		if err != nil {
			warn("listing candidates failed", err)
			continue
		}
		d := Decide(me, Vacancy{Term: h.Term, HighWater: hw, Holder: h.Info.ID}, cands, t)
		if d.Reason != lastReason {
			if d.Stalled {
				log.Warn("lock is free but not promotable", "term", h.Term, "high_water", hw.String(), "decision", d.Reason)
			} else {
				log.Info("lock is free", "term", h.Term, "high_water", hw.String(), "decision", d.Reason)
			}
			lastReason = d.Reason
			if cfg.OnDecision != nil {
				cfg.OnDecision(d)
			}
		}
		waiting := ""
		if !d.Eligible {
			waiting = d.Reason
		}
		if err := publish(withWaiting(me, waiting), true); err != nil {
			return nil, err
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
		case errors.Is(err, ErrHeld), errors.Is(err, ErrBehind):
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

// withWaiting returns info with its Waiting reason set.
func withWaiting(info Info, why string) Info {
	info.Waiting = why
	return info
}
