package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// ConsulConfig configures a Consul Leaser.
type ConsulConfig struct {
	// Client talks to the LOCAL Consul agent: the session is bound to that agent's node, so
	// that the node's serfHealth check ends the session when the node is lost.
	Client *api.Client
	// Namespace, Job and Group name the Nomad group; together they form the key prefix
	// bedrock/<namespace>/<job>/<group> (each part path-escaped).
	Namespace, Job, Group string
	// Root replaces the "bedrock" root of the key prefix (tests, several clusters in one Consul).
	Root string
	// ID identifies this instance (the allocation id); it names the candidacy key.
	ID string
	// Timing holds the session parameters; zero fields take DefaultTiming's values.
	Timing Timing
	// Checks are the node checks linked to the session (default: serfHealth). Add checks whose
	// failure must end the mastership; a failing check invalidates the session at once, which
	// the safety argument covers (see Timing).
	Checks []string
	// Logger receives the election's logs (default: no logs).
	Logger hclog.Logger
	// OnSession, when set, learns every session this instance creates (the first and each
	// replacement) before it can hold the lock with it. The syncer task writes it into the
	// allocation so the driver can release the lock at once if the syncer dies (see
	// ReleaseAbandoned) instead of everyone waiting out the TTL and the lock-delay.
	OnSession func(id string)
	// OnTTLRaised, when set, learns that the Consul servers refused Timing.TTL and the session
	// runs with the smallest TTL they allow instead (a stock Consul's session_ttl_min is 10s).
	OnTTLRaised func(asked, used time.Duration)
}

// Consul is the Leaser backed by a Consul session, the lock key
// <prefix>/leader and candidacy keys <prefix>/candidates/<id> bound to the same session.
//
// The session is created with behavior "release", never "delete": deleting the lock key would
// reset its LockIndex and with it the term, which must only grow.
type Consul struct {
	cfg    ConsulConfig
	timing Timing
	log    hclog.Logger
	prefix string

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	acquiring sync.Mutex // one Acquire at a time: two would both lock with the same session

	mu        sync.Mutex
	session   string
	lastOK    time.Time // send time of the last successful renewal (or creation)
	lease     *consulLease
	published *Info // last candidacy, republished on a new session
	closed    bool
	kick      chan struct{} // wakes the renewer to recompute its interval (lock acquired)
}

// KeyPrefix returns the key prefix of a group: root/<namespace>/<job>/<group>.
func KeyPrefix(root, namespace, job, group string) string {
	if root == "" {
		root = "bedrock"
	}
	esc := func(s string) string { return url.PathEscape(s) }
	return strings.Join([]string{root, esc(namespace), esc(job), esc(group)}, "/")
}

// NewConsul creates the session and starts renewing it until Close. It fails when Consul is
// unreachable or refuses the session (wrapping ErrTTLRefused when the TTL is below the
// servers' session_ttl_min).
func NewConsul(ctx context.Context, cfg ConsulConfig) (*Consul, error) {
	if cfg.Client == nil {
		return nil, errors.New("lease: no Consul client")
	}
	if cfg.Namespace == "" || cfg.Job == "" || cfg.Group == "" || cfg.ID == "" {
		return nil, fmt.Errorf("lease: namespace (%q), job (%q), group (%q) and instance id (%q) must all be set",
			cfg.Namespace, cfg.Job, cfg.Group, cfg.ID)
	}
	t := cfg.Timing.withDefaults()
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("lease: timing: %w", err)
	}
	if len(cfg.Checks) == 0 {
		cfg.Checks = []string{"serfHealth"}
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &Consul{
		cfg:    cfg,
		timing: t,
		log:    log.Named("lease"),
		prefix: KeyPrefix(cfg.Root, cfg.Namespace, cfg.Job, cfg.Group),
		kick:   make(chan struct{}, 1),
	}
	sent := time.Now()
	id, err := c.createSession(ctx)
	if floor, ok := refusedTTLMin(err); ok && floor > c.timing.TTL {
		// A stock Consul refuses TTLs under 10s. The TTL is not what keeps one master at a
		// time (Validity derives from the lock-delay, see Timing) nor what makes a failover
		// fast (the driver releases a dead syncer's lock, serfHealth ends a lost node's
		// session): it only bounds a master that is cut off but alive. So take the smallest
		// TTL the servers allow rather than refuse to run.
		asked := c.timing.TTL
		c.timing.TTL = floor
		if verr := c.timing.Validate(); verr != nil {
			return nil, fmt.Errorf("lease: the servers' smallest session TTL %s does not fit the timing: %w", floor, verr)
		}
		log.Warn("the Consul servers refuse the session TTL; using the smallest they allow", "asked", asked, "used", floor)
		if cfg.OnTTLRaised != nil {
			cfg.OnTTLRaised(asked, floor)
		}
		sent = time.Now()
		id, err = c.createSession(ctx)
	}
	if err != nil {
		return nil, err
	}
	c.session, c.lastOK = id, sent
	if cfg.OnSession != nil {
		cfg.OnSession(id)
	}
	// the session outlives the creation request: keep ctx's values, not its cancellation
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.ctx, c.cancel = life, cancel
	c.wg.Add(1)
	go c.renewLoop(life)
	c.log.Debug("session created", "session", id, "ttl", t.TTL, "lock_delay", t.LockDelay, "validity", t.Validity())
	return c, nil
}

// LeaderKey is the lock key.
func (c *Consul) LeaderKey() string { return c.prefix + "/leader" }

// CandidateKey is the candidacy key of instance id.
func (c *Consul) CandidateKey(id string) string {
	return c.prefix + "/candidates/" + url.PathEscape(id)
}

// Session returns the current session id (it changes when a lost session is replaced).
func (c *Consul) Session() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session
}

// Timing returns the timing parameters in use.
func (c *Consul) Timing() Timing { return c.timing }

func (c *Consul) createSession(ctx context.Context) (string, error) {
	se := &api.SessionEntry{
		Name:       c.prefix + "/" + c.cfg.ID,
		TTL:        c.timing.TTL.String(),
		LockDelay:  c.timing.LockDelay,
		Behavior:   api.SessionBehaviorRelease,
		NodeChecks: c.cfg.Checks,
	}
	id, _, err := c.cfg.Client.Session().Create(se, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		if strings.Contains(err.Error(), "Invalid Session TTL") {
			return "", fmt.Errorf("lease: %w %s: set session_ttl_min = \"1s\" (or less than the TTL) in the Consul servers' configuration, or raise the TTL: %w",
				ErrTTLRefused, c.timing.TTL, err)
		}
		return "", fmt.Errorf("lease: create Consul session: %w", err)
	}
	return id, nil
}

// ttlBounds reads the allowed range from Consul's refusal of a session TTL, e.g.
// "Invalid Session TTL '3000000000', must be between [10s=24h0m0s]".
var ttlBounds = regexp.MustCompile(`must be between \[([0-9a-zµ.]+)=([0-9a-zµ.]+)\]`)

// refusedTTLMin returns the smallest TTL the servers allow when err is their refusal of the
// session TTL.
func refusedTTLMin(err error) (time.Duration, bool) {
	if err == nil || !errors.Is(err, ErrTTLRefused) {
		return 0, false
	}
	m := ttlBounds.FindStringSubmatch(err.Error())
	if m == nil {
		return 0, false
	}
	d, perr := time.ParseDuration(m[1])
	if perr != nil || d <= 0 {
		return 0, false
	}
	return d, true
}

// renewLoop keeps the session alive. A master renews every Validity/3 so its deadline keeps
// moving; on errors it retries every RetryEvery until the session must be presumed gone (TTL
// after the last success: Consul only promises TTL), then replaces it. A session Consul reports
// unknown is replaced at once. Losing the session loses the lease.
func (c *Consul) renewLoop(ctx context.Context) {
	defer c.wg.Done()
	failing := false
	for {
		c.mu.Lock()
		holding := c.lease != nil
		id, lastOK := c.session, c.lastOK
		c.mu.Unlock()

		// due one interval after the last successful renewal's send, so that the deadline
		// never falls further behind than the interval
		wait := time.Until(lastOK.Add(c.timing.RenewInterval(holding)))
		if failing {
			wait = c.timing.RetryEvery
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-c.kick:
			timer.Stop()
			continue
		case <-timer.C:
		}

		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, c.timing.RenewInterval(true))
		entry, _, err := c.cfg.Client.Session().Renew(id, (&api.WriteOptions{}).WithContext(rctx))
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && entry != nil:
			failing = false
			c.mu.Lock()
			if c.session == id {
				c.lastOK = sent
				if c.lease != nil {
					c.lease.extend(c.timing.DeadlineAfter(sent))
				}
			}
			c.mu.Unlock()
		case err == nil:
			c.log.Warn("session invalidated by Consul; creating a new one", "session", id)
			c.replaceSession(ctx, id, fmt.Errorf("%w: session %s invalidated by Consul", ErrLost, id))
			failing = false
		default:
			if time.Since(lastOK) < c.timing.TTL {
				if !failing {
					c.log.Warn("session renewal failed; retrying", "session", id, "every", c.timing.RetryEvery, "error", err)
				} else {
					c.log.Debug("session renewal failed again", "session", id, "error", err)
				}
				failing = true
				continue
			}
			failing = true
			c.log.Error("session not renewed for a TTL; presuming it gone", "session", id, "ttl", c.timing.TTL, "error", err)
			c.replaceSession(ctx, id, fmt.Errorf("%w: session %s not renewed for %s: %w", ErrLost, id, c.timing.TTL, err))
		}
	}
}

// replaceSession drops the lease, destroys the old session (best effort: it may still hold
// the lock until Consul expires it) and creates a new one, retrying until it succeeds or the
// Leaser closes; then it republishes the candidacy.
func (c *Consul) replaceSession(ctx context.Context, old string, cause error) {
	c.mu.Lock()
	if c.session != old {
		c.mu.Unlock()
		return
	}
	if c.lease != nil {
		c.lease.lose(cause)
		c.lease = nil
	}
	c.mu.Unlock()

	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, _ = c.cfg.Client.Session().Destroy(old, (&api.WriteOptions{}).WithContext(dctx))
	cancel()

	backoff := c.timing.RetryEvery
	for {
		sent := time.Now()
		cctx, cancel := context.WithTimeout(ctx, c.timing.TTL)
		id, err := c.createSession(cctx)
		cancel()
		if err == nil {
			if c.cfg.OnSession != nil {
				c.cfg.OnSession(id)
			}
			c.mu.Lock()
			c.session, c.lastOK = id, sent
			pub := c.published
			c.mu.Unlock()
			c.log.Info("new session", "session", id)
			if pub != nil {
				pctx, cancel := context.WithTimeout(ctx, c.timing.TTL)
				if err := c.Publish(pctx, *pub); err != nil {
					c.log.Warn("republishing candidacy failed", "error", err)
				}
				cancel()
			}
			return
		}
		c.log.Warn("creating a session failed; retrying", "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// Acquire tries once to take the lock. It reads the lock key and the high-water key, applies
// the promotion rule (Qualifies), then locks the key and raises the high-water mark to info's
// position in one transaction guarded by both keys' ModifyIndex: the term written into the
// value (LockIndex+1) is exactly the LockIndex Consul assigns, and the rule was checked
// against the mark as it is when the lock is taken. A concurrent change makes it retry a few
// times.
func (c *Consul) Acquire(ctx context.Context, info Info) (Lease, error) {
	c.acquiring.Lock()
	defer c.acquiring.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if c.lease != nil {
		c.mu.Unlock()
		return nil, errors.New("lease: already holding the lock")
	}
	session := c.session
	c.mu.Unlock()

	key, hwKey := c.LeaderKey(), c.HighWaterKey()
	for attempt := 0; attempt < 3; attempt++ {
		q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
		cur, _, err := c.cfg.Client.KV().Get(key, q)
		if err != nil {
			return nil, fmt.Errorf("lease: read %s: %w", key, err)
		}
		hwPair, _, err := c.cfg.Client.KV().Get(hwKey, q)
		if err != nil {
			return nil, fmt.Errorf("lease: read %s: %w", hwKey, err)
		}
		hw, err := decodeHighWater(hwPair)
		if err != nil {
			return nil, err
		}
		guard := &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: key}}
		term := uint64(1)
		if cur != nil {
			if cur.Session != "" && cur.Session != session {
				return nil, fmt.Errorf("lease: %w (session %s, term %d)", ErrHeld, cur.Session, cur.LockIndex)
			}
			guard = &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: cur.ModifyIndex}}
			term = cur.LockIndex + 1
			if cur.Session == session {
				term = cur.LockIndex // re-locking by the same session keeps the index
			}
		}
		if why := Qualifies(info, cur != nil && cur.LockIndex > 0, hw); why != "" {
			return nil, fmt.Errorf("lease: %w: %s", ErrBehind, why)
		}
		hwGuard := &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: hwKey}}
		if hwPair != nil {
			hwGuard = &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: hwKey, Index: hwPair.ModifyIndex}}
		}
		info.Term = term
		val, err := json.Marshal(info)
		if err != nil {
			return nil, fmt.Errorf("lease: encode holder info: %w", err)
		}
		mark := HighWater{Term: term, Position: info.Position, ID: c.cfg.ID} // ≥ hw: it qualified
		hwVal, err := json.Marshal(mark)
		if err != nil {
			return nil, fmt.Errorf("lease: encode high-water mark: %w", err)
		}
		ops := api.TxnOps{
			guard,
			hwGuard,
			{KV: &api.KVTxnOp{Verb: api.KVLock, Key: key, Value: val, Session: session}},
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: hwKey, Value: hwVal}},
			{KV: &api.KVTxnOp{Verb: api.KVGet, Key: key}},
		}
		// Measured BEFORE the request: see Timing's safety argument.
		sent := time.Now()
		ok, resp, _, err := c.cfg.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("lease: lock %s: %w", key, err)
		}
		if !ok {
			var whats []string
			guardFailed := false
			for _, e := range resp.Errors {
				whats = append(whats, e.What)
				if e.OpIndex <= 1 && !strings.Contains(e.What, "lock delay") {
					guardFailed = true
				}
			}
			if guardFailed {
				continue // a key changed between the read and the lock: read again
			}
			return nil, fmt.Errorf("lease: %w: %s", ErrHeld, strings.Join(whats, "; "))
		}
		// every op that touches an entry returns it; the last one is the get's
		var got *api.KVPair
		for _, r := range resp.Results {
			if r.KV != nil && r.KV.Key == key {
				got = r.KV
			}
		}
		if got == nil || got.Session != session {
			return nil, fmt.Errorf("lease: %w: lock transaction succeeded but the key shows another holder", ErrHeld)
		}
		if got.LockIndex != term {
			// cannot happen under the index guard; the LockIndex is authoritative anyway
			c.log.Warn("term in the lock value differs from LockIndex", "written", term, "lock_index", got.LockIndex)
		}
		l := newConsulLease(c, session, got.LockIndex, c.timing.DeadlineAfter(sent), info)
		l.marked = mark.Position
		c.mu.Lock()
		if c.session != session || c.closed {
			c.mu.Unlock()
			// the session was replaced meanwhile: this lock is on a dying session
			l.lose(fmt.Errorf("%w: session replaced during acquisition", ErrLost))
			return nil, fmt.Errorf("lease: %w: session replaced during acquisition", ErrHeld)
		}
		c.lease = l
		c.wg.Add(1)
		c.mu.Unlock()
		select {
		case c.kick <- struct{}{}:
		default:
		}
		go l.watch()
		c.log.Info("lock acquired", "key", key, "term", l.term, "high_water", mark.Position.String(), "deadline_in", time.Until(l.Deadline()))
		return l, nil
	}
	return nil, fmt.Errorf("lease: %w: the keys kept changing during acquisition", ErrHeld)
}

// HighWaterKey is the group's high-water key (see highwater.go).
func (c *Consul) HighWaterKey() string { return GroupHighWaterKey(c.prefix) }

// HighWater reads the group's high-water mark with a consistent read.
func (c *Consul) HighWater(ctx context.Context) (HighWater, error) {
	pair, _, err := c.cfg.Client.KV().Get(c.HighWaterKey(), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return HighWater{}, fmt.Errorf("lease: read %s: %w", c.HighWaterKey(), err)
	}
	return decodeHighWater(pair)
}

// decodeHighWater decodes the high-water key (nil: never written). A value that does not
// decode is an error, not "no mark": promoting on a garbled mark could lose data, so the
// group waits until an operator repairs or deletes the key.
func decodeHighWater(p *api.KVPair) (HighWater, error) {
	var hw HighWater
	if p == nil {
		return hw, nil
	}
	if err := json.Unmarshal(p.Value, &hw); err != nil || hw.Term == 0 {
		return HighWater{}, fmt.Errorf("lease: the high-water key %s holds %q, not a mark: delete it to let any complete copy be promoted", p.Key, p.Value)
	}
	return hw, nil
}

// Publish writes this instance's candidacy, bound to the session so that it stops counting as
// live when the session ends.
func (c *Consul) Publish(ctx context.Context, info Info) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	session := c.session
	info.ID = c.cfg.ID
	pub := info
	c.published = &pub
	c.mu.Unlock()

	val, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("lease: encode candidacy: %w", err)
	}
	key := c.CandidateKey(c.cfg.ID)
	ok, _, err := c.cfg.Client.KV().Acquire(&api.KVPair{Key: key, Value: val, Session: session},
		(&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("lease: publish candidacy %s: %w", key, err)
	}
	if !ok {
		return fmt.Errorf("lease: publish candidacy: %s is held by another session (duplicate instance id %q?)", key, c.cfg.ID)
	}
	return nil
}

// Withdraw deletes this instance's candidacy, so that it is not counted ahead of others (e.g.
// a master stepping down withdraws before releasing, or the others would wait for it). A later
// Publish (or Campaign) enters it again.
func (c *Consul) Withdraw(ctx context.Context) error {
	c.mu.Lock()
	c.published = nil
	session := c.session
	c.mu.Unlock()
	key := c.CandidateKey(c.cfg.ID)
	// only our own candidacy: a release with our session fails harmlessly on someone else's
	pair, _, err := c.cfg.Client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("lease: withdraw candidacy: %w", err)
	}
	if pair == nil || (pair.Session != "" && pair.Session != session) {
		return nil
	}
	if _, _, err := c.cfg.Client.KV().DeleteCAS(pair, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("lease: withdraw candidacy: %w", err)
	}
	return nil
}

// Candidates lists the published candidacies; Live tells whether the candidacy's session lives.
func (c *Consul) Candidates(ctx context.Context) ([]Candidate, error) {
	pairs, _, err := c.cfg.Client.KV().List(c.prefix+"/candidates/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("lease: list candidates: %w", err)
	}
	out := make([]Candidate, 0, len(pairs))
	for _, p := range pairs {
		var info Info
		if err := json.Unmarshal(p.Value, &info); err != nil || info.ID == "" {
			c.log.Warn("ignoring malformed candidacy", "key", p.Key, "error", err)
			continue
		}
		out = append(out, Candidate{Info: info, Live: p.Session != ""})
	}
	return out, nil
}

// Watch follows the lock key with blocking queries; see Leaser.
func (c *Consul) Watch(ctx context.Context) <-chan Holder {
	ch := make(chan Holder, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		close(ch)
		return ch
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer close(ch)
		ctx, cancel := mergeDone(ctx, c.ctx)
		defer cancel()
		c.watchKey(ctx, func(h Holder) { sendLatest(ch, h) })
	}()
	return ch
}

// watchKey calls fn with the key's state now and after each change, until ctx ends.
func (c *Consul) watchKey(ctx context.Context, fn func(Holder)) {
	key := c.LeaderKey()
	var index uint64
	first := true
	var last Holder
	backoff := c.timing.RetryEvery
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx)
		pair, meta, err := c.cfg.Client.KV().Get(key, q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Debug("watching the lock key failed; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = c.timing.RetryEvery
		// Consul's rule for blocking queries: an index going backwards (e.g. after a snapshot
		// restore) restarts the watch from scratch; 0 is never a valid wait index.
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
		h := holderOf(pair)
		if first || h != last {
			first, last = false, h
			fn(h)
		}
	}
}

func holderOf(p *api.KVPair) Holder {
	if p == nil {
		return Holder{}
	}
	h := Holder{Held: p.Session != "", Term: p.LockIndex, Session: p.Session, Index: p.ModifyIndex}
	_ = json.Unmarshal(p.Value, &h.Info) // garbage leaves the zero Info: the term still stands
	return h
}

// Close withdraws the candidacy, releases the lock if held and destroys the session. Releasing
// before destroying matters: a release sets no lock-delay, destroying a session holding the
// lock would.
func (c *Consul) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	l := c.lease
	session := c.session
	c.mu.Unlock()

	// withdraw first: a live candidacy with the best position would make the others wait
	// their rank delay for an instance that is going away
	var errs []error
	if err := c.Withdraw(ctx); err != nil {
		errs = append(errs, err)
	}
	if l != nil {
		if err := l.Release(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	c.cancel()
	c.wg.Wait()
	if _, err := c.cfg.Client.Session().Destroy(session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		errs = append(errs, fmt.Errorf("lease: destroy session %s: %w", session, err))
	}
	return errors.Join(errs...)
}

// consulLease is a held lock.
type consulLease struct {
	c       *Consul
	session string
	term    uint64

	mu       sync.Mutex
	deadline time.Time
	info     Info
	marked   core.Position // the high-water mark last written
	err      error
	done     chan struct{}
	renewed  chan time.Time
	stop     context.CancelFunc
	ctx      context.Context
}

func newConsulLease(c *Consul, session string, term uint64, deadline time.Time, info Info) *consulLease {
	ctx, cancel := context.WithCancel(c.ctx)
	return &consulLease{c: c, session: session, term: term, deadline: deadline, info: info,
		done: make(chan struct{}), renewed: make(chan time.Time, 1), ctx: ctx, stop: cancel}
}

func (l *consulLease) Term() uint64 { return l.term }

func (l *consulLease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

func (l *consulLease) Renewed() <-chan time.Time { return l.renewed }

func (l *consulLease) Done() <-chan struct{} { return l.done }

func (l *consulLease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// extend moves the deadline forward (never back). Called with c.mu held.
func (l *consulLease) extend(d time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil || !d.After(l.deadline) {
		return
	}
	l.deadline = d
	sendLatest(l.renewed, d)
}

// lose ends the lease with err (first cause wins).
func (l *consulLease) lose(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	l.err = err
	// the deadline may still lie ahead: pull it in so nobody acts on it
	l.deadline = time.Now()
	close(l.done)
	close(l.renewed)
	l.stop()
}

// detach unregisters the lease from its Leaser and ends it.
func (l *consulLease) detach(err error) {
	l.c.mu.Lock()
	if l.c.lease == l {
		l.c.lease = nil
	}
	l.c.mu.Unlock()
	l.lose(err)
}

// watch ends the lease as soon as the key shows another holder or none.
func (l *consulLease) watch() {
	defer l.c.wg.Done()
	l.c.watchKey(l.ctx, func(h Holder) {
		if h.Held && h.Session == l.session {
			return
		}
		cause := fmt.Errorf("%w: the lock key shows no holder (term %d)", ErrLost, h.Term)
		if h.Held {
			cause = fmt.Errorf("%w: the lock key shows session %s at term %d", ErrLost, h.Session, h.Term)
		}
		l.c.log.Warn("lost the lock", "term", l.term, "error", cause)
		l.detach(cause)
	})
}

func (l *consulLease) Update(ctx context.Context, info Info) error {
	if err := l.Err(); err != nil {
		return err
	}
	info.Term = l.term
	val, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("lease: encode holder info: %w", err)
	}
	ok, _, err := l.c.cfg.Client.KV().Acquire(&api.KVPair{Key: l.c.LeaderKey(), Value: val, Session: l.session},
		(&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("lease: update holder info: %w", err)
	}
	if !ok {
		err := fmt.Errorf("%w: update refused, the lock is no longer ours", ErrLost)
		l.detach(err)
		return err
	}
	l.mu.Lock()
	l.info = info
	l.mu.Unlock()
	return nil
}

// Mark raises the high-water mark in a transaction that first checks that this session still
// holds the lock key, so a deposed master can never move it.
func (l *consulLease) Mark(ctx context.Context, pos core.Position) error {
	if err := l.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	if !l.marked.Less(pos) {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	val, err := json.Marshal(HighWater{Term: l.term, Position: pos, ID: l.c.cfg.ID})
	if err != nil {
		return fmt.Errorf("lease: encode high-water mark: %w", err)
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: l.c.LeaderKey(), Session: l.session}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: l.c.HighWaterKey(), Value: val}},
	}
	ok, resp, _, err := l.c.cfg.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("lease: mark high-water %s: %w", pos, err)
	}
	if !ok {
		var whats []string
		for _, e := range resp.Errors {
			whats = append(whats, e.What)
		}
		return fmt.Errorf("lease: mark high-water %s: %w: %s", pos, ErrLost, strings.Join(whats, "; "))
	}
	l.mu.Lock()
	if l.marked.Less(pos) {
		l.marked = pos
	}
	l.mu.Unlock()
	return nil
}

func (l *consulLease) Release(ctx context.Context) error {
	select {
	case <-l.done:
		return nil // already over: nothing to release
	default:
	}
	// stop acting as master before the key is free
	l.detach(fmt.Errorf("%w: released", ErrLost))
	l.mu.Lock()
	info := l.info
	l.mu.Unlock()
	val, _ := json.Marshal(info)
	ok, _, err := l.c.cfg.Client.KV().Release(&api.KVPair{Key: l.c.LeaderKey(), Value: val, Session: l.session},
		(&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("lease: release %s: %w", l.c.LeaderKey(), err)
	}
	if !ok {
		return fmt.Errorf("lease: release %s refused (the lock was no longer ours)", l.c.LeaderKey())
	}
	l.c.log.Info("lock released", "term", l.term)
	return nil
}

// sendLatest puts v into a one-slot channel, replacing an unread older value. Only one
// goroutine may send on ch.
func sendLatest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}

// mergeDone returns a context that ends when either a or b ends, carrying a's values.
func mergeDone(a, b context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(a)
	stop := context.AfterFunc(b, cancel)
	return ctx, func() { stop(); cancel() }
}
