package lease

import (
	"cmp"
	"fmt"
	"time"
)

// Decision says whether and when this instance should contend for a free lock.
type Decision struct {
	// Eligible is false when this instance must not become master now: its copy does not
	// qualify (see Qualifies) — it is incomplete, or behind the group's high-water mark.
	Eligible bool
	// Stalled is true when no live candidate qualifies, by the candidacies as published: the
	// group waits rather than promote stale data (the reason says what it waits for).
	Stalled bool
	// Rank is the number of live qualified candidates ahead of this one (0: this one goes first).
	Rank int
	// Delay is how long to wait, after seeing the lock free, before trying to acquire.
	Delay time.Duration
	// Reason explains the decision for logs and task events.
	Reason string
}

// Vacancy is what a candidate knows about the free lock when it decides.
type Vacancy struct {
	// Term is the lock's LockIndex: the last holder's term (0: the group never had a master).
	Term uint64
	// HighWater is the last master's published high-water mark.
	HighWater HighWater
	// Holder is the id of the last holder (the lock key's value). Its candidacy, unless
	// republished for this vacancy, is what it published before it became master: a master
	// that released the lock and still wants it campaigns again and republishes; one that
	// stepped down for good (and has not withdrawn yet) must not hold the others back.
	Holder string
}

// better reports whether a should be promoted before b: a caught-up copy before one still in
// its initial sync, then the most advanced position, then the smaller id (a deterministic
// tie-break, so that two equal candidates do not both go first).
func better(a, b Info) bool {
	if a.CaughtUp != b.CaughtUp {
		return a.CaughtUp
	}
	if a.Position != b.Position {
		return b.Position.Less(a.Position)
	}
	return cmp.Less(a.ID, b.ID)
}

// Decide orders the candidates for a free lock. self is this instance's current info (fresher
// than what it published); cands are the published candidacies (self's own entry and dead ones
// are ignored); v is the vacancy: the last term and the high-water mark it left.
//
// Only candidates that qualify (Qualifies) may contend, and only they count in the ranking: a
// stale copy can neither win nor hold a better one back. Among them:
//
//   - The most advanced goes first. It waits only for live candidacies not yet republished for
//     this vacancy (Info.Vacant), whose current position is unknown, and at most RankDelay: a
//     live candidate republishes within a round trip of seeing the lock free, so only a frozen
//     one makes the best wait that long, and then it is ranked by what it last published.
//   - Each one behind it waits LockDelay·Drift + rank·RankDelay (the rank part capped at
//     MaxRankDelay), counted from when it saw the lock free. After a session invalidation
//     nobody can take the lock before its lock-delay ends (at most LockDelay·Drift after the
//     invalidation, which precedes every candidate's sight of the free lock); the best retries
//     every RetryEvery from then on, so it takes the lock RankDelay before anyone behind it
//     tries — the ranking is not a race against the lock-delay. A lagging candidate still
//     takes over when the better ones are dead or stuck.
func Decide(self Info, v Vacancy, cands []Candidate, t Timing) Decision {
	everHeld := v.Term > 0
	if why := Qualifies(self, everHeld, v.HighWater); why != "" {
		d := Decision{Reason: why}
		qualified := 0
		for _, c := range cands {
			if c.Live && c.ID != self.ID && Qualifies(c.Info, everHeld, v.HighWater) == "" {
				qualified++
			}
		}
		if qualified == 0 {
			d.Stalled = true
			d.Reason = fmt.Sprintf("%s; no live candidate qualifies, so the group waits for one that does (the last master or a clone holding %s) instead of promoting stale data",
				why, v.HighWater.Position)
		}
		return d
	}
	rank, unknown := 0, 0
	for _, c := range cands {
		if !c.Live || c.ID == self.ID {
			continue
		}
		fresh := !everHeld || c.Vacant == v.Term
		if !fresh && c.ID == v.Holder {
			continue
		}
		if Qualifies(c.Info, everHeld, v.HighWater) != "" && fresh {
			continue // a current, non-qualifying position: it cannot win
		}
		switch {
		case better(c.Info, self):
			rank++
		case !fresh:
			unknown++ // may have moved past us since it published
		}
	}
	if rank > 0 {
		delay := time.Duration(float64(t.LockDelay)*t.Drift) + min(time.Duration(rank)*t.RankDelay, t.MaxRankDelay)
		return Decision{Eligible: true, Rank: rank, Delay: delay,
			Reason: fmt.Sprintf("%d live candidate(s) more caught up than position %s: waiting %s for them to take over", rank, self.Position, delay)}
	}
	if unknown > 0 {
		return Decision{Eligible: true, Delay: t.RankDelay,
			Reason: fmt.Sprintf("most caught-up live candidate at %s, but %d candidate(s) have not republished their position yet: waiting up to %s for them", self.Position, unknown, t.RankDelay)}
	}
	return Decision{Eligible: true, Reason: fmt.Sprintf("most caught-up live candidate (position %s, high-water mark %s): contending now", self.Position, v.HighWater)}
}
