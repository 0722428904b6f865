package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// CloneConfig configures a Clone.
type CloneConfig struct {
	Root       *os.Root
	MasterAddr string
	Secret     []byte
	ID         string
	Logger     hclog.Logger
	Metrics    *Metrics
	State      *StateStore
	Owners     bool
	// OnProgress is told about initial sync progress (throttled).
	OnProgress func(core.Progress)
	// Dial overrides net.Dialer (tests).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Base is the position the master started its term from (what it wrote into the lock
	// key when it took it); zero when unknown. A copy whose position lies beyond it in the
	// same term holds data the master does not (it lost the promotion to a less advanced
	// clone): its divergent files are moved aside before the initial sync, like a former
	// master's.
	Base core.Position
	// Capture: the group runs in a capture mode (journal.go). A copy counts as synced only
	// once its master cut it over to the journal, and from then on it applies the journal.
	Capture bool
}

// CloneState is what a clone knows about itself.
type CloneState struct {
	Position  core.Position `json:"position"`
	MasterSeq uint64        `json:"master_seq"`
	Connected bool          `json:"connected"`
	Synced    bool          `json:"synced"`
	CaughtUp  bool          `json:"caught_up"`
	Healthy   bool          `json:"healthy"`
	Error     string        `json:"error,omitempty"`
	Progress  core.Progress `json:"initial_sync"`
	// Stalled is true when nothing came from the master (no op, no heartbeat, no
	// connection) for stallAfter outside an initial sync; Silence says for how long.
	Stalled bool    `json:"stalled,omitempty"`
	Silence float64 `json:"master_silence_seconds,omitempty"`
}

// stallAfter is how long a clone hears nothing from its master (heartbeats come every
// heartbeatEvery) before it says so: in logs, in its status, in the master_silence_seconds
// metric and, through the election, in the announced state. The connection itself is given
// up only after readTimeout.
const stallAfter = 4 * heartbeatEvery

// Clone mirrors a master's data directory.
type Clone struct {
	cfg CloneConfig
	log hclog.Logger
	ap  *tree.Applier

	mu        sync.Mutex
	st        CloneState
	session   uint64
	resumable bool
	local     map[string]*tree.Entry
	lastProg  time.Time
	// recorded is the position last written to the state file: the position this clone
	// acknowledges (see record).
	recorded core.Position
	// heard is when the last frame came from the master (or the clone started); bulk is
	// true during an initial sync, when silences are the clone's own work (watch).
	heard time.Time
	bulk  bool
	// journal: this session (or the one it resumes) follows the capture journal; rp applies it.
	journal bool
	rp      *capture.Replayer
}

// NewClone prepares a clone; Run starts it.
func NewClone(cfg CloneConfig) *Clone {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	c := &Clone{cfg: cfg, log: cfg.Logger, ap: &tree.Applier{Root: cfg.Root, Owners: cfg.Owners, Bulk: true}}
	if cfg.Capture {
		c.rp = capture.ReplayerOn(cfg.Root)
		// A position is acknowledged after a syncfs of the whole copy (live.go), which covers
		// every fsync marker before it: one sync per acknowledgement, not one per marker.
		c.rp.NoSync = true
		c.rp.Owners = cfg.Owners
	}
	st := cfg.State.Get()
	c.st.Position = st.Position
	// A copy that completed an initial sync stays a complete copy, at its
	// position, until a new initial sync starts changing it (which records
	// Synced false first, see runSession): it keeps its right to be
	// promoted across a change of master and a restart. Without this, a
	// clone whose new master died before they could resync would refuse
	// promotion and leave the group without a master.
	c.st.Synced = st.Synced
	c.st.Healthy = true
	c.recorded = st.Position
	return c
}

// record makes pos the durable position before it is acknowledged: the master publishes the
// highest acknowledged position as the group's high-water mark, and a restarted clone claims
// the position it recorded (lease/highwater.go). The data is synced first, so the record is
// never ahead of the data; a crash before the record only makes the clone claim less.
func (c *Clone) record(pos core.Position) error {
	c.mu.Lock()
	done := c.recorded == pos
	c.mu.Unlock()
	if done {
		return nil
	}
	if err := c.cfg.State.Update(func(st *State) { st.Position, st.Role = pos, core.RoleClone }); err != nil {
		return applyError{fmt.Errorf("record position %d/%d: %w", pos.Term, pos.Seq, err)}
	}
	c.mu.Lock()
	c.recorded = pos
	c.mu.Unlock()
	return nil
}

// Status returns the clone's state.
func (c *Clone) Status() CloneState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *Clone) setErr(err error) {
	c.mu.Lock()
	c.st.Healthy = err == nil
	if err != nil {
		c.st.Error = err.Error()
	} else {
		c.st.Error = ""
	}
	c.st.Connected = false
	c.st.CaughtUp = false
	c.mu.Unlock()
	if err != nil {
		c.cfg.Metrics.Healthy.Set(0)
	} else {
		c.cfg.Metrics.Healthy.Set(1)
	}
	c.cfg.Metrics.CaughtUp.Set(0)
}

// applyError marks an error from applying data (as opposed to the network):
// the clone is unhealthy and its next attempt verifies everything.
type applyError struct{ err error }

func (e applyError) Error() string { return e.err.Error() }
func (e applyError) Unwrap() error { return e.err }

// Run connects to the master and follows it until ctx ends, reconnecting
// with backoff. Errors are reported through Status, not returned: a clone
// keeps trying for as long as it is a clone.
func (c *Clone) Run(ctx context.Context) error {
	if err := c.ap.Prepare(); err != nil {
		return err
	}
	c.mu.Lock()
	c.heard = time.Now()
	c.mu.Unlock()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go c.watch(wctx)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := c.runSession(ctx)
		if ctx.Err() != nil {
			return nil //nolint:nilerr // ending the session is how a cancelled clone stops
		}
		var ae applyError
		switch {
		case errors.As(err, &ae):
			c.cfg.Metrics.ApplyErrors.Inc()
			c.mu.Lock()
			c.resumable = false
			c.local = nil
			c.mu.Unlock()
			c.log.Error("apply failed, will verify and resync", "error", err)
		case err != nil:
			c.log.Warn("replication connection ended", "error", err)
		}
		c.setErr(err)
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 3*time.Second)
	}
	return nil
}

// watch reports a master that went silent within stallAfter, and its return.
func (c *Clone) watch(ctx context.Context) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.cfg.Metrics.Silence.Set(0)
			return
		case <-t.C:
		}
		c.mu.Lock()
		silence := time.Since(c.heard)
		if c.bulk {
			silence = 0
		}
		was := c.st.Stalled
		c.st.Stalled = silence >= stallAfter
		c.st.Silence = 0
		if c.st.Stalled {
			c.st.Silence = silence.Seconds()
		}
		now, why := c.st.Stalled, c.st.Error
		c.mu.Unlock()
		c.cfg.Metrics.Silence.Set(silence.Seconds())
		switch {
		case now && !was:
			c.log.Warn("nothing received from the master", "master", c.cfg.MasterAddr, "for", silence.Round(time.Millisecond).String(), "error", why)
		case !now && was:
			c.log.Info("receiving from the master again", "master", c.cfg.MasterAddr)
		}
	}
}

// heardNow notes a frame from the master.
func (c *Clone) heardNow(bulk bool) {
	c.mu.Lock()
	c.heard, c.bulk = time.Now(), bulk
	c.mu.Unlock()
}

func (c *Clone) runSession(ctx context.Context) error {
	c.mu.Lock()
	resumable := c.resumable
	c.mu.Unlock()
	if !resumable {
		// Verify our own disk before talking to the master: this is what
		// repairs a clone that crashed in the middle of applying a change.
		// The scan is our own work, not the master's silence.
		c.mu.Lock()
		c.bulk = true
		c.mu.Unlock()
		defer c.heardNow(false)
		local, err := tree.Scan(ctx, c.cfg.Root, tree.ScanOptions{Prev: c.local, OnError: func(p string, err error) {
			c.log.Warn("cannot read local file, it will be replaced", "path", p, "error", err)
		}})
		if err != nil {
			return applyError{fmt.Errorf("scan local tree: %w", err)}
		}
		c.local = local
	}
	dial := c.cfg.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 3 * time.Second}
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	conn, err := dial(ctx, c.cfg.MasterAddr)
	if err != nil {
		return fmt.Errorf("dial master %s: %w", c.cfg.MasterAddr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	s := &session{c: c, conn: conn, r: bufio.NewReaderSize(conn, 1<<20), w: bufio.NewWriterSize(conn, 64*1024)}
	defer func() {
		if s.fw != nil {
			s.fw.Abort()
		}
	}()
	hello, err := s.handshake()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.st.Connected = true
	c.st.MasterSeq = s.head
	pos := c.st.Position
	resume := c.resumable && c.session == hello.Session && pos.Term == s.term
	c.mu.Unlock()
	if resume {
		err = s.send(wire.TResume, pos.Seq, (&wire.Resume{Session: hello.Session, Journal: c.journal}).Marshal())
	} else {
		err = s.send(wire.TNeedManifest, pos.Seq, nil)
	}
	if err != nil {
		return err
	}
	f, err := s.read(wire.MaxPayload)
	if err != nil {
		return err
	}
	if err := s.checkTerm(f); err != nil {
		return err
	}
	switch f.Type {
	case wire.TResume:
		if !resume || f.Seq != pos.Seq {
			return errors.New("master resumed a position we did not ask for")
		}
		c.log.Info("resumed", "term", s.term, "seq", pos.Seq)
	case wire.TManifestChunk, wire.TManifestEnd:
		c.mu.Lock()
		c.resumable = false
		c.session = hello.Session
		c.journal = false
		c.mu.Unlock()
		if err := s.initialSync(ctx, f); err != nil {
			return err
		}
	case wire.TError:
		return peerError(f)
	default:
		return fmt.Errorf("unexpected %s from master", f.Type)
	}
	return s.stream(ctx)
}

func (s *session) checkTerm(f wire.Frame) error {
	if f.Term != s.term {
		return fmt.Errorf("%w: frame of term %d in a session of term %d", ErrStaleTerm, f.Term, s.term)
	}
	return nil
}

func checkName(p string) error {
	if err := tree.ValidName(p); err != nil {
		return applyError{err}
	}
	if tree.Excluded(p) {
		return applyError{fmt.Errorf("%w: %q is reserved", tree.ErrBadName, p)}
	}
	return nil
}

func wrapApply(err error) error {
	if err == nil {
		return nil
	}
	return applyError{err}
}
