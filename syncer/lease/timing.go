package lease

import (
	"cmp"
	"errors"
	"fmt"
	"time"
)

// Timing holds the session parameters and the self-fence arithmetic derived from them.
//
// # Safety argument: one master at a time
//
// Notation: s is the local monotonic instant at which this instance SENT a request that then
// succeeded — the acquisition of the lock or a renewal of the session that holds it. Measuring
// from the send, not from the answer, makes the argument immune to request latency: Consul
// handled the request at some real instant r ≥ s, and the session was valid then, so it still
// held the lock at r (a lock is only lost by invalidating its session or releasing it; we never
// release while acting as master, and the key is never deleted — see "Outside the model").
//
// How can another instance come to hold the lock after r?
//
//   - TTL expiry (the holder died or lost contact with Consul). Consul's contract is that a
//     session is not invalidated before TTL after its last renewal; the v1.x servers actually
//     arm their timer with TTL × SessionTTLMultiplier (= 2). So the invalidation instant
//     I ≥ r + TTL (really r + 2·TTL).
//   - A linked health check going critical: serfHealth when the node's agent is declared
//     failed by gossip or LEAVES (an agent restart with leave_on_terminate, the default for
//     client agents), or an operator destroying the session. This can happen at any instant,
//     even a millisecond after r: gossip runs over UDP independently of the RPC path our
//     renewals take, so "serfHealth detection adds time" does not hold in general. So only
//     I ≥ r can be assumed.
//
// In both cases Consul sets a lock-delay on every key the invalidated session held: the leader
// refuses any lock on the key until I + LockDelay, measured on its own monotonic clock (the
// check is done before the Raft commit, by the leader). Therefore the earliest instant A at
// which another session can hold the lock satisfies, in real time,
//
//	A ≥ r + LockDelay/ρ ≥ s + LockDelay/ρ
//
// where ρ ≥ 1 bounds how much faster the server's clock may run than ours (Drift; one factor
// covers both clocks' rate errors). The TTL case gives the much larger A ≥ s + TTL + LockDelay/ρ,
// so the check-driven case decides. This instance stops acting as master at its deadline
//
//	d = s + Validity,  Validity = LockDelay/ρ − StopBudget
//
// (measured on its own monotonic clock, which rate-bounds the same way), and the driver must
// have the app killed within StopBudget after d. Hence the app is dead by s + LockDelay/ρ ≤ A:
// the old master is fenced before any other instance can hold the lock, whatever invalidated
// its session. The margin under the TTL (TTL − Validity) is what the TTL path adds on top.
//
// With the defaults (TTL 3s, LockDelay 2s, ρ = 1.05, StopBudget 500ms):
//
//	Validity = 2s/1.05 − 0.5s ≈ 1.405s after the send of each successful renewal
//	app dead by s + 1.905s ≤ A ≥ s + 1.905s (any invalidation; 95ms of the 2s is drift allowance
//	                                          — real clocks drift ~10⁻⁴, not 5·10⁻²)
//	TTL path:       A ≥ s + 2·3s + 2s = s + 8s on Consul 1.x (s + 5s by contract)
//	renew interval while master = Validity/3 ≈ 468ms (three attempts per validity window),
//	otherwise TTL/3 = 1s
//	margin under the TTL = 3s − 1.405s ≈ 1.6s
//
// Failover cost of these numbers: a graceful release hands over at once (a release sets no
// lock-delay); a dead syncer whose agent lives is replaced after 2·TTL + LockDelay ≈ 8s minus
// the time since its last renewal; a lost node after min(serf detection, 2·TTL) + LockDelay.
// A shorter LockDelay fails over faster but shrinks Validity, so the app would stop on shorter
// Consul hiccups; 2s keeps three renewal attempts per window with 0.5s for the driver to kill.
//
// # Outside the model
//
// Deleting the lock key (an operator's `consul kv delete`) frees it without lock-delay and
// resets LockIndex; the holder's watch notices and steps down, but only ACLs prevent it.
// Lock-delay lives in the servers' memory: a server restarted from a snapshot forgets it.
type Timing struct {
	// TTL is the session TTL (Consul's session_ttl_min must allow it). Default 3s.
	TTL time.Duration
	// LockDelay is the session's lock-delay (at most 60s, Consul's cap). Default 2s.
	LockDelay time.Duration
	// Drift bounds the rate ratio between any two clocks involved (≥ 1). Default 1.05.
	Drift float64
	// StopBudget is the time the driver has, after the deadline, to kill the app
	// (SIGTERM grace + SIGKILL + reaping). Default 500ms.
	StopBudget time.Duration
	// RetryEvery is the cadence of acquisition attempts while the key is free but refused
	// (lock-delay) and of renewal retries after an error. Default 150ms.
	RetryEvery time.Duration
	// RankDelay is how much longer each less caught-up candidate waits before contending
	// for a free lock, on top of LockDelay·Drift (see Decide: the ranking must not be a race
	// with the lock-delay); it also bounds how long the best one waits for the others to
	// republish their positions. Default 1s.
	RankDelay time.Duration
	// MaxRankDelay caps the rank part of the wait so that a lagging (but qualified, see
	// Qualifies) candidate still takes over when the better ones are dead. Default 3s.
	MaxRankDelay time.Duration
}

// DefaultTiming returns the defaults argued for in Timing's documentation.
func DefaultTiming() Timing {
	return Timing{
		TTL:          3 * time.Second,
		LockDelay:    2 * time.Second,
		Drift:        1.05,
		StopBudget:   500 * time.Millisecond,
		RetryEvery:   150 * time.Millisecond,
		RankDelay:    time.Second,
		MaxRankDelay: 3 * time.Second,
	}
}

// WithDefaults fills zero fields from DefaultTiming, so a partial setting
// (just a TTL, say) can be validated as the lease will use it.
func (t Timing) WithDefaults() Timing { return t.withDefaults() }

// withDefaults fills zero fields from DefaultTiming.
func (t Timing) withDefaults() Timing {
	d := DefaultTiming()
	t.TTL = cmp.Or(t.TTL, d.TTL)
	t.LockDelay = cmp.Or(t.LockDelay, d.LockDelay)
	t.Drift = cmp.Or(t.Drift, d.Drift)
	t.StopBudget = cmp.Or(t.StopBudget, d.StopBudget)
	t.RetryEvery = cmp.Or(t.RetryEvery, d.RetryEvery)
	t.RankDelay = cmp.Or(t.RankDelay, d.RankDelay)
	t.MaxRankDelay = cmp.Or(t.MaxRankDelay, d.MaxRankDelay)
	return t
}

// maxLockDelay is Consul's cap on a session's lock-delay: a larger value would silently be cut
// to it and break the argument.
const maxLockDelay = 60 * time.Second

// minValidity keeps enough room for three renewal attempts of a sane duration.
const minValidity = 300 * time.Millisecond

// Validate rejects timings for which the safety argument does not hold or that could not work.
func (t Timing) Validate() error {
	var errs []error
	if t.TTL < time.Second {
		errs = append(errs, fmt.Errorf("session TTL %s is below 1s", t.TTL))
	}
	if t.TTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("session TTL %s is above Consul's 24h maximum", t.TTL))
	}
	if t.LockDelay <= 0 || t.LockDelay > maxLockDelay {
		errs = append(errs, fmt.Errorf("lock-delay %s must be in (0, %s]: it is what fences an old master", t.LockDelay, maxLockDelay))
	}
	if t.LockDelay > t.TTL {
		// harmless for safety, but Validity would exceed TTL and renewals at TTL/3 would be
		// too rare for the TTL-based contract of Consul; keep the argument simple
		errs = append(errs, fmt.Errorf("lock-delay %s exceeds the session TTL %s", t.LockDelay, t.TTL))
	}
	if t.Drift < 1 || t.Drift > 2 {
		errs = append(errs, fmt.Errorf("drift factor %g must be in [1, 2]", t.Drift))
	}
	if t.StopBudget < 0 {
		errs = append(errs, fmt.Errorf("stop budget %s is negative", t.StopBudget))
	}
	if t.RetryEvery <= 0 || t.RankDelay < 0 || t.MaxRankDelay < 0 {
		errs = append(errs, errors.New("retry and rank delays must be positive"))
	}
	if len(errs) == 0 && t.Validity() < minValidity {
		errs = append(errs, fmt.Errorf("lock-delay %s leaves a master validity of %s after drift (%g) and stop budget (%s); need at least %s",
			t.LockDelay, t.Validity(), t.Drift, t.StopBudget, minValidity))
	}
	return errors.Join(errs...)
}

// Validity is how long after sending a successful acquisition or renewal this instance may act
// as master: LockDelay/Drift − StopBudget (never more than TTL/Drift − StopBudget).
func (t Timing) Validity() time.Duration {
	bound := min(t.LockDelay, t.TTL)
	return time.Duration(float64(bound)/t.Drift) - t.StopBudget
}

// Margin is how much earlier than the session TTL the master fences itself.
func (t Timing) Margin() time.Duration { return t.TTL - t.Validity() }

// DeadlineAfter is the self-fence deadline for a successful request sent at sent.
func (t Timing) DeadlineAfter(sent time.Time) time.Time { return sent.Add(t.Validity()) }

// RenewInterval is the session renewal period: TTL/3, and Validity/3 while holding the lock so
// that a master gets three attempts before its deadline.
func (t Timing) RenewInterval(holding bool) time.Duration {
	iv := t.TTL / 3
	if holding {
		iv = min(iv, t.Validity()/3)
	}
	return iv
}

// WorstTakeover bounds how long after its last successful renewal a silently dead holder keeps
// the lock on Consul 1.x: 2·TTL (the server's TTL multiplier) + LockDelay.
func (t Timing) WorstTakeover() time.Duration { return 2*t.TTL + t.LockDelay }
