package lease

import (
	"fmt"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// # Safety argument: never promote a stale copy
//
// The fence (see Timing) makes sure two masters never run at once. This is the other half:
// whoever takes the lock next holds everything the group must not lose.
//
// Notation. A position p = (term, seq) names a state of the data: term t's master produced
// seq 1, 2, ... from the data it started with; positions are ordered by term, then seq. A copy
// "holds" p when its data is p's state or a later state of the same history.
//
// What the master publishes. The group keeps one high-water key, <prefix>/highwater, beside
// the lock key. It is written only
//
//  1. by the acquisition transaction itself: whoever takes the lock at term T writes
//     hw := (T, its own position s_T) in the same Consul transaction that locks the key, and
//  2. by the holder of term T, through Lease.Mark, in a transaction that first checks that its
//     session still holds the lock key (KVCheckSession), with the highest position of term T
//     that a clone has acknowledged (a clone acknowledges a position only after its data and
//     its own record of the position are on disk). The master marks at least every
//     MarkEvery while the acknowledged position moves, and once more, after its app stopped
//     and its clones had a moment to acknowledge the tail, before a graceful release.
//
// so the key only ever grows (the holder marks only increases, and the acquisition requires
// s_T ≥ hw, below), and after the holder lost the lock nobody can write it until the next
// acquisition: its value is the last thing the last master published.
//
// The rule (Qualifies, enforced twice: by Decide before contending and by the acquisition
// transaction itself, which carries a KVCheckIndex on the high-water key so the check and the
// lock are one atomic step). A candidate may take the lock only if
//
//	(a) its copy is complete (CaughtUp: an initial sync that started changing the copy and has
//	    not finished leaves a mix of two states, whatever position it last recorded), and
//	(b) its position p ≥ hw, the value of the high-water key read in the same transaction.
//
// Claim: the new master of term T+1 holds every position any clone acknowledged to any
// earlier master before that master's last mark, and the starting data of every earlier
// master. By induction on terms: s_{T+1} ≥ hw by (b); hw ≥ every mark of term T and s_T by
// the monotonic writes above; s_T ≥ everything published before T by the induction
// hypothesis. Positions of different terms compare soundly because term T's history starts
// from s_T, which holds every earlier published position: a later-term position holds every
// published earlier-term position.
//
// What a candidate's position proves. A clone's position is the last position whose ops it
// applied and synced (its data is never behind it); it is recorded durably before it is
// acknowledged, so a restarted clone claims at most what it holds. A master's position is its
// head; it records it durably as it goes, and its data is always at least there. A restarted
// syncer therefore claims only its recorded position and completeness, and (b) compares that
// with what the last master published: a former master that never heard of a later term, or
// a clone that slept through part of one, is behind hw as soon as any clone acknowledged
// something newer, and cannot be promoted.
//
// What is not promised. Positions acknowledged in the last MarkEvery before a master died
// may be missing from hw. They are still protected when the clone holding them lives: while
// the lock is free every candidate republishes its current position at once (Info.Vacant)
// and only the most advanced qualified one contends, the others waiting out the lock-delay
// and their rank (Decide). If that clone is dead too, a qualified clone behind it may win;
// its extra data is then moved aside, never overwritten, when it resyncs (the replica's
// lost+found), as is a former master's unreplicated tail. When no live candidate qualifies,
// the group WAITS for one that does (the former master coming back, a clone reconnecting) and
// says so; an operator who accepts the loss deletes the high-water key, which lifts (b).
//
// Outside the model: deleting or editing the high-water key by hand; a Consul snapshot
// restore that rolls the key back.

// HighWater is the value of the group's high-water key: the position a candidate must hold to
// be promoted.
type HighWater struct {
	// Term is the term of the master that wrote it (the lock's LockIndex then).
	Term uint64 `json:"term"`
	// Position is the high-water position.
	Position core.Position `json:"position"`
	// ID is the instance that wrote it, for humans.
	ID string `json:"id,omitempty"`
}

// Set tells whether a master ever published a high-water mark (a group that never had a
// master under this rule has none, and anyone may start it).
func (h HighWater) Set() bool { return h.Term > 0 }

// String formats the mark for logs and task events.
func (h HighWater) String() string {
	if !h.Set() {
		return "none"
	}
	return fmt.Sprintf("%s (published by term %d)", h.Position, h.Term)
}

// Qualifies applies the promotion rule to a candidate: everHeld tells whether the group ever
// had a master (the lock's LockIndex > 0), hw is the last published high-water mark. It
// returns "" when info may take the lock, otherwise why not.
func Qualifies(info Info, everHeld bool, hw HighWater) string {
	if (everHeld || hw.Set()) && !info.CaughtUp {
		return "initial sync not finished: this copy is incomplete and cannot be promoted"
	}
	if hw.Set() && info.Position.Less(hw.Position) {
		return fmt.Sprintf("position %s is behind the high-water mark %s: this copy lacks data the last master had replicated",
			info.Position, hw)
	}
	return ""
}
