package lease

import (
	"cmp"
	"fmt"
	"time"
)

// Decision says whether and when this instance should contend for a free lock.
type Decision struct {
	// Eligible is false when this instance must not become master now (it has not finished
	// its initial sync and the group has had a master, so its data is incomplete).
	Eligible bool
	// Rank is the number of live candidates ahead of this one (0: this one goes first).
	Rank int
	// Delay is how long to wait, after seeing the lock free, before trying to acquire.
	Delay time.Duration
	// Reason explains the decision for logs and task events.
	Reason string
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
// are ignored); everHeld tells whether the group ever had a master (the key's LockIndex > 0).
//
// The most caught-up live candidate contends at once; each one behind it waits RankDelay more,
// capped at MaxRankDelay, so that a lagging clone still takes over when the better ones are dead
// (a dead candidate's session ends within 2·TTL, and until then the cap bounds the wait). A copy
// that has not finished its initial sync is incomplete: it never contends once the group has had
// a master, because promoting it would silently lose data; operators see why in the reason.
func Decide(self Info, everHeld bool, cands []Candidate, t Timing) Decision {
	if everHeld && !self.CaughtUp {
		return Decision{Reason: "initial sync not finished: this copy is incomplete and cannot be promoted"}
	}
	rank := 0
	for _, c := range cands {
		if !c.Live || c.ID == self.ID {
			continue
		}
		if better(c.Info, self) {
			rank++
		}
	}
	delay := min(time.Duration(rank)*t.RankDelay, t.MaxRankDelay)
	reason := "most caught-up live candidate: contending now"
	if rank > 0 {
		reason = fmt.Sprintf("%d live candidate(s) more caught up than position %s: waiting %s", rank, self.Position, delay)
	}
	return Decision{Eligible: true, Rank: rank, Delay: delay, Reason: reason}
}
