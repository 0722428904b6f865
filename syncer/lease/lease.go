// Package lease elects the master of a Bedrock group: every syncer holds a lease session and
// contends for one lock key per group; the holder is the master, and the key's LockIndex is the
// fencing term. The package also computes the master's self-fence deadline (see Timing, where the
// safety argument is written down) and orders candidates so that the most caught-up clone is
// promoted first.
//
// The Leaser interface keeps the election logic readable without the Consul client (in the
// spirit of LiteFS's Leaser); Consul is the implementation used in production and in tests.
package lease

import (
	"context"
	"errors"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// Errors callers can test for with errors.Is.
var (
	// ErrHeld means another instance holds the lock (or Consul refused it because of the
	// lock-delay left behind by an invalidated holder): retry later, do not act as master.
	ErrHeld = errors.New("lock held by another instance")
	// ErrLost means a lease this instance held is gone: its session was invalidated, the key
	// was taken or deleted, or it was released. The holder must stop acting as master at once.
	ErrLost = errors.New("lease lost")
	// ErrClosed is returned by a Leaser after Close.
	ErrClosed = errors.New("leaser closed")
	// ErrTTLRefused means the Consul servers refuse the session TTL (below session_ttl_min).
	ErrTTLRefused = errors.New("consul refuses the session TTL")
	// ErrBehind means the acquisition was refused because the candidate does not qualify
	// (see Qualifies): its copy is incomplete or behind the group's high-water mark.
	ErrBehind = errors.New("candidate does not hold the group's high-water mark")
)

// MarkEvery is how often a master publishes a moving high-water mark (Lease.Mark): the
// positions acknowledged in the last MarkEvery before a crash are the only ones the rule may
// not cover (see the safety argument in highwater.go).
const MarkEvery = 50 * time.Millisecond

// Info describes an instance: what a master writes into the lock key and what a candidate
// publishes, so that clones find the master and the election can rank candidates.
type Info struct {
	// ID identifies the instance (the Nomad allocation id); unique within the group.
	ID string `json:"id"`
	// Node is the Nomad/Consul node the instance runs on, for humans.
	Node string `json:"node,omitempty"`
	// Address is host:port where the instance's syncer accepts replication connections.
	Address string `json:"address,omitempty"`
	// Term is the term the writer held or saw when it wrote (informative; the authoritative
	// term is always the key's LockIndex).
	Term uint64 `json:"term,omitempty"`
	// Position is the writer's replication position.
	Position core.Position `json:"position"`
	// CaughtUp tells whether the writer finished its initial sync and follows the live stream.
	CaughtUp bool `json:"caught_up"`
	// Vacant is, in a candidacy, the term after whose end it was published: the candidate saw
	// the lock free with this LockIndex. Zero while it sees a holder. A candidacy of the
	// current vacancy carries the candidate's position as of the vacancy, so the ranking does
	// not rely on a copy published while a master still fed it.
	Vacant uint64 `json:"vacant,omitempty"`
	// Waiting is, in a candidacy, why the candidate does not contend for the free lock ("" when
	// it does), for the status command.
	Waiting string `json:"waiting,omitempty"`
}

// Holder is the current state of the lock key as observed by Watch.
type Holder struct {
	// Held tells whether a live session holds the key.
	Held bool
	// Term is the key's LockIndex: the term of the current holder, or of the last one when
	// the key is free. Zero when the key has never been locked.
	Term uint64
	// Session is the holder's session id ("" when free).
	Session string
	// Info is what the holder wrote (zero when the key never existed or holds garbage).
	Info Info
	// Index is Consul's ModifyIndex of the key (orders observations).
	Index uint64
}

// Candidate is a live instance that may be promoted: its published Info and whether its
// session still lives.
type Candidate struct {
	Info
	// Live tells whether the candidate's session still holds its candidate key.
	Live bool
}

// Leaser acquires, renews and releases the group's lock, observes its holder, and publishes
// this instance's candidacy. Implementations renew their own session in the background.
type Leaser interface {
	// Acquire tries once to take the lock, writing info (with Term filled in) into the key.
	// It returns ErrHeld when another session holds it or lock-delay is still running, and
	// ErrBehind when info does not qualify (Qualifies) against the high-water mark read in
	// the same atomic step. On success the high-water mark becomes (term, info.Position).
	Acquire(ctx context.Context, info Info) (Lease, error)
	// Watch sends the key's state now and after every change until ctx ends; a slow reader
	// only sees the latest state. The channel closes when ctx ends or the Leaser closes.
	Watch(ctx context.Context) <-chan Holder
	// Publish writes (or updates) this instance's candidacy with its position. The
	// candidacy lives as long as the Leaser's session.
	Publish(ctx context.Context, info Info) error
	// Withdraw deletes this instance's candidacy (before stepping down, so that the others
	// do not wait for it).
	Withdraw(ctx context.Context) error
	// Candidates lists every published candidacy, live or not.
	Candidates(ctx context.Context) ([]Candidate, error)
	// HighWater reads the group's high-water mark (a consistent read; the zero HighWater when
	// none was ever published). See highwater.go for what it is.
	HighWater(ctx context.Context) (HighWater, error)
	// Timing returns the timing parameters in use.
	Timing() Timing
	// Close withdraws the candidacy, releases the lock if held (no lock-delay: a clone
	// takes over at once) and ends the session.
	Close(ctx context.Context) error
}

// Lease is a held lock. Its Deadline moves forward with every successful renewal of the
// session; past it the holder must not act as master even if it still believes it holds the
// lock (see Timing for why that is safe).
type Lease interface {
	// Term is the fencing term: the key's LockIndex after this acquisition.
	Term() uint64
	// Deadline is the local (monotonic) instant until which this instance may run the app.
	Deadline() time.Time
	// Renewed delivers the new deadline after every renewal that extended it; a slow reader
	// only sees the latest one. It is closed when the lease ends.
	Renewed() <-chan time.Time
	// Done is closed when the lease is lost or released; Err then tells why (wraps ErrLost).
	Done() <-chan struct{}
	// Err is nil while the lease is held.
	Err() error
	// Update rewrites the lock key's value (e.g. a new position) while the lease is held.
	Update(ctx context.Context, info Info) error
	// Mark raises the group's high-water mark to pos (the highest position a clone has
	// acknowledged), only while the lease is held; a pos not above the last mark is a no-op.
	// It fails wrapping ErrLost once the lock is no longer this session's.
	Mark(ctx context.Context, pos core.Position) error
	// Release frees the lock without lock-delay so that a clone takes over at once. The
	// caller must have stopped the app first: Release ends this instance's mastership
	// immediately and nothing but the caller's ordering protects the handover. To step
	// down and stay a clone, Withdraw first and campaign again later, or this instance,
	// usually the most caught-up, would be first in line again.
	Release(ctx context.Context) error
}
