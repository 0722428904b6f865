package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

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

type session struct {
	c    *Clone
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	wmu  sync.Mutex
	term uint64
	head uint64
	bulk bool
	buf  []byte
	fw   *tree.FileWriter
	// seal and open are the two directions once the handshake is done
	// (wire/secure.go): nil before, when only clear handshake frames pass.
	seal *wire.Sealer
	open *wire.Opener
}

// send writes one frame, sealed once the handshake is done (under wmu).
func (s *session) send(t wire.Type, seq uint64, payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	f := wire.Frame{Type: t, Term: s.term, Seq: seq, Payload: payload}
	var err error
	if s.seal != nil {
		err = s.seal.WriteFrame(s.w, f)
	} else {
		err = wire.WriteFrame(s.w, f)
	}
	if err != nil {
		return err
	}
	return s.w.Flush()
}

// readData reads a frame, with FileData decoded straight into a buffer
// from get (see wire.ReadDataFrame).
func (s *session) readData(get func(int) []byte) (wire.Frame, wire.FileData, error) {
	_ = s.conn.SetReadDeadline(time.Now().Add(bulkTimeout))
	f, d, b, err := s.open.ReadDataFrame(s.r, s.conn, wire.MaxPayload, s.buf, get)
	s.buf = b
	if err == nil {
		s.c.heardNow(true)
	}
	return f, d, err
}

func (s *session) read(limit int) (wire.Frame, error) {
	timeout := readTimeout
	if s.bulk {
		timeout = bulkTimeout // no heartbeats during an initial sync
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(timeout))
	var (
		f   wire.Frame
		b   []byte
		err error
	)
	if s.open != nil {
		f, b, err = s.open.ReadFrame(s.r, limit, s.buf)
	} else {
		f, b, err = wire.ReadFrame(s.r, limit, s.buf)
	}
	s.buf = b
	if err == nil {
		s.c.heardNow(s.bulk)
	}
	return f, err
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
		err = s.send(wire.TResume, pos.Seq, (&wire.Resume{Session: hello.Session}).Marshal())
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

func peerError(f wire.Frame) error {
	var em wire.ErrorMsg
	_ = em.Unmarshal(f.Payload)
	return fmt.Errorf("master says: %s", em.Msg)
}

// handshake authenticates both ways and applies the fencing rule: a master
// of an older term than one we have seen is refused.
func (s *session) handshake() (wire.Hello, error) {
	c := s.c
	_ = s.conn.SetDeadline(time.Now().Add(handshakeTimeout))
	defer func() { _ = s.conn.SetDeadline(time.Time{}) }()
	var hello wire.Hello
	f, err := s.read(wire.MaxAuthPayload)
	if err != nil {
		return hello, fmt.Errorf("read hello: %w", err)
	}
	if f.Type != wire.THello || hello.Unmarshal(f.Payload) != nil {
		return hello, fmt.Errorf("%w: no valid hello from %s", ErrAuth, c.cfg.MasterAddr)
	}
	if hello.Version != wire.Version {
		return hello, fmt.Errorf("master speaks protocol %d, we speak %d", hello.Version, wire.Version)
	}
	st := c.cfg.State.Get()
	known := st.Term
	auth := wire.Auth{Nonce: nonce(), ClientID: c.cfg.ID}
	authF := wire.Frame{Type: wire.TAuth, Term: known, Seq: st.Position.Seq}
	keys, err := HandshakeKeys(c.cfg.Secret, f, hello, authF, auth)
	if err != nil {
		return hello, err
	}
	auth.MAC = keys.ClientMAC
	s.term = known
	if err := s.send(wire.TAuth, authF.Seq, auth.Marshal()); err != nil {
		return hello, err
	}
	g, err := s.read(wire.MaxAuthPayload)
	if err != nil {
		return hello, fmt.Errorf("%w: %w", ErrAuth, err)
	}
	if g.Type == wire.TError {
		return hello, fmt.Errorf("%w: %w", ErrAuth, peerError(g))
	}
	var ok wire.AuthOK
	if g.Type != wire.TAuthOK || ok.Unmarshal(g.Payload) != nil {
		return hello, fmt.Errorf("%w: bad auth reply", ErrAuth)
	}
	if !wire.CheckMAC(keys.ServerMAC, ok.MAC) {
		return hello, fmt.Errorf("%w: master at %s does not know the secret", ErrAuth, c.cfg.MasterAddr)
	}
	if s.seal, s.open, err = keys.Client(); err != nil {
		return hello, err
	}
	if f.Term < known {
		_ = s.send(wire.TError, 0, (&wire.ErrorMsg{Msg: fmt.Sprintf("stale term %d, seen %d", f.Term, known)}).Marshal())
		return hello, fmt.Errorf("%w: master has term %d, we have seen %d", ErrStaleTerm, f.Term, known)
	}
	if f.Term > known {
		if err := c.cfg.State.Update(func(st *State) { st.Term = f.Term }); err != nil {
			return hello, applyError{err}
		}
	}
	s.term, s.head = f.Term, f.Seq
	c.cfg.Metrics.Term.Set(float64(f.Term))
	return hello, nil
}

func (s *session) checkTerm(f wire.Frame) error {
	if f.Term != s.term {
		return fmt.Errorf("%w: frame of term %d in a session of term %d", ErrStaleTerm, f.Term, s.term)
	}
	return nil
}

type plan struct {
	requests []wire.Request
	bytes    int64
	dirs     []*tree.Entry
}

// initialSync receives the manifest, brings the local tree in line, and
// requests exactly the blocks that differ.
func (s *session) initialSync(ctx context.Context, f wire.Frame) error {
	c := s.c
	s.bulk = true
	defer func() { s.bulk = false }()
	tStart := time.Now()
	var dec tree.ManifestDecoder
	for f.Type == wire.TManifestChunk {
		if err := dec.Add(f.Payload); err != nil {
			c.log.Error("rejecting manifest from master", "error", err)
			_ = s.send(wire.TError, 0, (&wire.ErrorMsg{Msg: "manifest rejected: " + err.Error()}).Marshal())
			return applyError{fmt.Errorf("manifest rejected: %w", err)}
		}
		var err error
		if f, err = s.read(wire.MaxPayload); err != nil {
			return err
		}
		if err := s.checkTerm(f); err != nil {
			return err
		}
	}
	if f.Type != wire.TManifestEnd {
		return fmt.Errorf("unexpected %s in manifest", f.Type)
	}
	snap := f.Seq
	tManifest := time.Now()
	master := dec.Entries
	if master == nil {
		master = map[string]*tree.Entry{}
	}
	c.log.Info("manifest received", "entries", len(master), "seq", snap)
	c.mu.Lock()
	prev := c.st.Position // what the copy holds now (never less than recorded)
	c.mu.Unlock()
	prevSynced := c.cfg.State.Get().Synced
	// From here the tree is changed toward the manifest: until the sync
	// completes it is a mix of two positions, not a copy anyone may be
	// promoted with, even after a crash. Say so durably first.
	if prevSynced {
		if err := c.cfg.State.Update(func(st *State) { st.Synced = false }); err != nil {
			return applyError{err}
		}
	}
	c.mu.Lock()
	c.st.Synced = false
	c.mu.Unlock()
	p, err := c.reconcileLocal(master, s.term, aside(prev, prevSynced, s.term, c.cfg.Base))
	if err != nil {
		return applyError{err}
	}
	tPlan := time.Now()
	c.mu.Lock()
	c.st.Progress = core.Progress{FilesTotal: int64(len(p.requests)), BytesTotal: p.bytes}
	c.st.Synced = false
	c.mu.Unlock()
	c.progress(true)
	sendErr := make(chan error, 1)
	go func() {
		for _, rq := range p.requests {
			s.wmu.Lock()
			err := s.seal.WriteFrame(s.w, wire.Frame{Type: wire.TRequest, Term: s.term, Seq: snap, Payload: rq.Marshal()})
			s.wmu.Unlock()
			if err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- s.send(wire.TRequestsDone, snap, nil)
	}()
	stopWriteback := c.ap.StartWriteback()
	defer stopWriteback()
	if err := s.receiveBulk(); err != nil {
		return err
	}
	if err := <-sendErr; err != nil {
		return err
	}
	stopWriteback()
	// Directory metadata last, children first: creating entries moved the
	// directories' mtimes.
	sort.Slice(p.dirs, func(i, j int) bool { return p.dirs[i].Path > p.dirs[j].Path })
	tFiles := time.Now()
	for _, d := range p.dirs {
		if err := c.ap.DirMeta(metaOf(d)); err != nil {
			return applyError{err}
		}
	}
	tData := time.Now()
	if err := c.ap.Sync(); err != nil {
		return applyError{err}
	}
	c.log.Debug("initial sync timings", "manifest", tManifest.Sub(tStart).String(), "reconcile", tPlan.Sub(tManifest).String(),
		"transfer", tFiles.Sub(tPlan).String(), "dirs", tData.Sub(tFiles).String(), "sync", time.Since(tData).String())
	pos := core.Position{Term: s.term, Seq: snap}
	if err := c.cfg.State.Update(func(st *State) {
		st.Position, st.Synced, st.Role = pos, true, core.RoleClone
	}); err != nil {
		return applyError{err}
	}
	c.mu.Lock()
	c.st.Position, c.st.Synced = pos, true
	c.recorded = pos
	c.st.MasterSeq = max(c.st.MasterSeq, snap)
	c.st.Progress.Done = true
	c.st.Progress.BytesDone = c.st.Progress.BytesTotal
	c.resumable = true
	c.mu.Unlock()
	c.progress(true)
	c.cfg.Metrics.Seq.Set(float64(snap))
	c.log.Info("initial sync complete", "seq", snap)
	return s.send(wire.TAck, snap, nil)
}

func (c *Clone) progress(force bool) {
	c.mu.Lock()
	p := c.st.Progress
	due := force || time.Since(c.lastProg) > time.Second
	if due {
		c.lastProg = time.Now()
	}
	c.mu.Unlock()
	c.cfg.Metrics.InitBytes.Set(float64(p.BytesDone))
	c.cfg.Metrics.InitBytesTot.Set(float64(p.BytesTotal))
	c.cfg.Metrics.InitFiles.Set(float64(p.FilesDone))
	c.cfg.Metrics.InitFilesTot.Set(float64(p.FilesTotal))
	if due && c.cfg.OnProgress != nil {
		c.cfg.OnProgress(p)
	}
}

// aside tells whether a complete copy at prev holds data that a master of term, started from
// base, does not: prev lies beyond base in base's own term (this copy was more advanced than
// the clone promoted instead of it). It returns the lost+found folder name for it, or "".
//
// Only the same-term case is decided here: a copy of a term older than base's would need the
// start of every term in between to be judged; those are a former master's case (below) or a
// copy that slept through a whole term, whose data is overwritten as before.
func aside(prev core.Position, synced bool, term uint64, base core.Position) string {
	if !synced || base == (core.Position{}) || prev.Term >= term || prev.Term != base.Term || prev.Seq <= base.Seq {
		return ""
	}
	return fmt.Sprintf("term%d-seq%d-beyond-seq%d", prev.Term, prev.Seq, base.Seq)
}

// reconcileLocal makes the local tree's structure match the manifest
// (moving divergent data aside first if this node was master in an older
// term, or holds positions beyond the master's start: beyond names the
// folder) and returns the block requests for file content.
func (c *Clone) reconcileLocal(master map[string]*tree.Entry, term uint64, beyond string) (*plan, error) {
	local := c.local
	st := c.cfg.State.Get()
	former := st.Role == core.RoleMaster && st.MasterTerm < term
	if former || beyond != "" {
		name := fmt.Sprintf("term%d", st.MasterTerm)
		if beyond != "" {
			name = beyond
		}
		dest := fmt.Sprintf("%s/%s-%s", tree.LostFound, name, time.Now().UTC().Format("20060102T150405.000Z"))
		moved := 0
		skip := "\x00" // descendants of what was just moved come right after it
		for _, l := range tree.Sorted(local) {
			if tree.Under(l.Path, skip) {
				continue
			}
			m := master[l.Path]
			diverged := m == nil || (m.Type != l.Type && m.Type != tree.TypeUnreadable) ||
				(l.Type == tree.TypeFile && m.Type == tree.TypeFile && !tree.SameContent(l, m)) ||
				(l.Type == tree.TypeSymlink && m.Target != l.Target)
			if !diverged || l.Type == tree.TypeUnreadable {
				continue
			}
			if err := c.ap.MoveAside(l.Path, dest+"/"+l.Path); err != nil {
				return nil, err
			}
			moved++
			skip = l.Path
			delete(local, l.Path)
		}
		if moved > 0 {
			what := "former master"
			if beyond != "" {
				what = "copy beyond the new master's start"
			}
			c.log.Warn(what+": divergent data moved aside", "entries", moved, "dir", dest)
		}
	}
	// Deletes, top level only. Entries below a deleted name are never looked
	// up again: the master has nothing below a name whose type it changed or
	// that it does not have.
	skip := "\x00"
	for _, l := range tree.Sorted(local) {
		if tree.Under(l.Path, skip) {
			continue
		}
		m := master[l.Path]
		if m != nil && (m.Type == l.Type || m.Type == tree.TypeUnreadable) {
			continue
		}
		if err := c.ap.Delete(l.Path); err != nil {
			return nil, err
		}
		skip = l.Path
		delete(local, l.Path)
	}
	p := &plan{}
	for _, m := range tree.Sorted(master) {
		l := local[m.Path]
		switch m.Type {
		case tree.TypeDir:
			if l == nil {
				// Its metadata comes at the end, with the others'.
				if err := c.ap.MkdirNew(metaOf(m)); err != nil {
					return nil, err
				}
			}
			p.dirs = append(p.dirs, m)
		case tree.TypeSymlink:
			if l == nil || l.Target != m.Target || !tree.SameMeta(l, m, c.cfg.Owners) {
				if err := c.ap.Symlink(wire.Symlink{Path: m.Path, Target: m.Target, MtimeNs: m.MtimeNs, UID: m.UID, GID: m.GID}); err != nil {
					return nil, err
				}
			}
		case tree.TypeFile:
			if l == nil || l.Type != tree.TypeFile {
				p.requests = append(p.requests, wire.Request{Path: m.Path, KnownBlocks: uint64(len(m.Hashes)), Whole: true})
				p.bytes += m.Size
				continue
			}
			rs := changedRanges(l.Hashes, m.Hashes)
			if len(rs) > 0 || l.Size != m.Size {
				p.requests = append(p.requests, wire.Request{Path: m.Path, KnownBlocks: uint64(len(m.Hashes)), Ranges: rs})
				for _, r := range rs {
					p.bytes += int64(r.Count) * tree.BlockSize
				}
				continue
			}
			if !tree.SameMeta(l, m, c.cfg.Owners) {
				if err := c.ap.SetMeta(metaOf(m)); err != nil {
					return nil, err
				}
			}
		}
	}
	return p, nil
}

// applyFile handles file frames; done is true when a file was committed
// (or reported gone).
func (s *session) applyFile(f wire.Frame) (bool, error) {
	c := s.c
	switch f.Type {
	case wire.TFileBegin:
		var b wire.FileBegin
		if err := b.Unmarshal(f.Payload); err != nil {
			return false, err
		}
		if err := tree.ValidName(b.Path); err != nil || tree.Excluded(b.Path) {
			return false, applyError{fmt.Errorf("master sent a bad name: %w", tree.ErrBadName)}
		}
		if s.fw != nil {
			return false, errors.New("file begins inside another file")
		}
		fw, err := c.ap.BeginFile(b, false)
		if err != nil {
			return false, applyError{err}
		}
		s.fw = fw
	case wire.TFileData:
		if s.fw == nil {
			return false, errors.New("file data outside a file")
		}
		var d wire.FileData
		if err := d.Unmarshal(f.Payload); err != nil {
			return false, err
		}
		if err := s.fw.Write(d); err != nil {
			if errors.Is(err, tree.ErrBadBlock) || errors.Is(err, wire.ErrMalformed) {
				return false, err // transport problem: resume re-requests
			}
			return false, applyError{err}
		}
		c.cfg.Metrics.BytesReceived.Add(float64(len(d.Data)))
		c.mu.Lock()
		c.st.Progress.BytesDone += int64(len(d.Data))
		c.mu.Unlock()
	case wire.TFileEnd:
		if s.fw == nil {
			return false, errors.New("file end outside a file")
		}
		fw := s.fw
		s.fw = nil
		if err := fw.Commit(); err != nil {
			return false, applyError{err}
		}
		return true, nil
	case wire.TFileGone:
		var pm wire.PathMsg
		if err := pm.Unmarshal(f.Payload); err != nil {
			return false, err
		}
		return true, nil
	default:
		return false, fmt.Errorf("unexpected %s from master", f.Type)
	}
	return false, nil
}

// stream applies live ops in order and acknowledges, after syncing the
// filesystem, whenever it has drained what the master sent (group commit).
func (s *session) stream(ctx context.Context) error {
	c := s.c
	c.mu.Lock()
	c.resumable = true
	c.st.Healthy, c.st.Error = true, ""
	c.mu.Unlock()
	c.cfg.Metrics.Healthy.Set(1)
	c.updateCaughtUp()
	// A resumed session may hold ops applied before the last one broke, not yet synced and
	// recorded: those are acknowledged only through the path below.
	c.mu.Lock()
	unacked := c.st.Position != c.recorded
	c.mu.Unlock()
	for ctx.Err() == nil {
		if unacked && s.r.Buffered() == 0 {
			if err := c.ap.Sync(); err != nil {
				return applyError{err}
			}
			pos := c.Status().Position
			if err := c.record(pos); err != nil {
				return err
			}
			if err := s.send(wire.TAck, pos.Seq, nil); err != nil {
				return err
			}
			unacked = false
			c.updateCaughtUp()
		}
		f, err := s.read(wire.MaxPayload)
		if err != nil {
			return err
		}
		if err := s.checkTerm(f); err != nil {
			return err
		}
		applied := true
		switch f.Type {
		case wire.THeartbeat:
			c.mu.Lock()
			c.st.MasterSeq = max(c.st.MasterSeq, f.Seq)
			c.mu.Unlock()
			c.updateCaughtUp()
			// Ack heartbeats too, so the master sees we are alive.
			if !unacked {
				if err := s.send(wire.TAck, c.Status().Position.Seq, nil); err != nil {
					return err
				}
			}
			continue
		case wire.TFileBegin, wire.TFileData:
			applied = false
			_, err = s.applyFile(f)
		case wire.TFileEnd, wire.TFileGone:
			_, err = s.applyFile(f)
		case wire.TMkdir:
			var m wire.Meta
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.Mkdir(m))
				}
			}
		case wire.TMeta:
			var m wire.Meta
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.SetMeta(m))
				}
			}
		case wire.TSymlink:
			var m wire.Symlink
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.Symlink(m))
				}
			}
		case wire.TDelete:
			var m wire.PathMsg
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.Delete(m.Path))
				}
			}
		case wire.TRename:
			var m wire.Rename
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.From); err == nil {
					if err = checkName(m.To); err == nil {
						err = wrapApply(c.ap.Rename(m.From, m.To))
					}
				}
			}
		case wire.TResyncRequired:
			return applyError{errors.New("master no longer holds our position, resyncing")}
		case wire.TError:
			return peerError(f)
		default:
			return fmt.Errorf("unexpected %s from master", f.Type)
		}
		if err != nil {
			return err
		}
		if applied {
			c.mu.Lock()
			c.st.Position = core.Position{Term: s.term, Seq: f.Seq}
			c.st.MasterSeq = max(c.st.MasterSeq, f.Seq)
			c.mu.Unlock()
			c.cfg.Metrics.Seq.Set(float64(f.Seq))
			unacked = true
		}
	}
	return ctx.Err()
}

func (c *Clone) updateCaughtUp() {
	c.mu.Lock()
	c.st.CaughtUp = c.st.Synced && c.st.Position.Seq >= c.st.MasterSeq
	up := c.st.CaughtUp
	c.mu.Unlock()
	if up {
		c.cfg.Metrics.CaughtUp.Set(1)
	} else {
		c.cfg.Metrics.CaughtUp.Set(0)
	}
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

// bulkWriters is how many files an initial sync writes at once. Creating
// many small files is system-call bound; two cores' worth of writers keeps
// the network side busy while the kernel allocates inodes.
const bulkWriters = 4

// A writer takes a batch of small files at once, which keeps the hand-offs
// between the reader and the writers (each a goroutine wake-up) far fewer
// than the files; a file from bulkStream bytes up is handed over on its
// own as soon as it begins, and streamed.
const (
	bulkStream = 1 << 20
	batchFiles = 64
	batchBytes = 1 << 20
)

type bulkJob struct {
	begin    wire.FileBegin
	received int64      // data bytes received so far
	data     []chunk    // a small file, complete
	chunks   chan chunk // a streamed file, as it arrives
}

// chunk is the data of one frame and the pool buffer holding it.
type chunk struct {
	wire.FileData
	buf []byte
}

// receiveBulk applies the file frames of an initial sync until Synced,
// writing several files at once (files of a sync are independent: their
// directories exist and nothing else touches them).
func (s *session) receiveBulk() error {
	c := s.c
	bufs := newBufPool()
	jobs := make(chan []*bulkJob, bulkWriters)
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		werr    error
		failed  = make(chan struct{})
		failOne sync.Once
	)
	fail := func(err error) {
		errMu.Lock()
		if werr == nil {
			werr = err
		}
		errMu.Unlock()
		failOne.Do(func() { close(failed) })
	}
	for i := 0; i < bulkWriters; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range jobs {
				for _, job := range batch {
					select {
					case <-failed:
						// Nothing more is written after a failure; a
						// streamed file is still drained for the reader.
						if job.chunks != nil {
							for range job.chunks {
							}
						}
						continue
					default:
					}
					if err := c.writeBulk(job, bufs); err != nil {
						fail(err)
					}
				}
			}
		}()
	}
	var (
		cur     *bulkJob
		batch   []*bulkJob
		batched int64 // bytes in batch
	)
	send := func(b []*bulkJob) bool {
		select {
		case jobs <- b:
			return true
		case <-failed:
			return false
		}
	}
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		b := batch
		batch, batched = nil, 0
		return send(b)
	}
	finish := func(err error) error {
		if cur != nil && cur.chunks != nil {
			close(cur.chunks)
		}
		close(jobs)
		wg.Wait()
		if err != nil {
			return err
		}
		errMu.Lock()
		defer errMu.Unlock()
		return werr
	}
	for {
		select {
		case <-failed:
			return finish(nil)
		default:
		}
		var got []byte
		f, d, err := s.readData(func(n int) []byte { got = bufs.get(n); return got })
		if err != nil {
			return finish(err)
		}
		if err := s.checkTerm(f); err != nil {
			return finish(err)
		}
		switch f.Type {
		case wire.TSynced:
			flush()
			return finish(nil)
		case wire.TError:
			return finish(peerError(f))
		case wire.TFileBegin:
			var b wire.FileBegin
			if err := b.Unmarshal(f.Payload); err != nil {
				return finish(err)
			}
			if err := checkName(b.Path); err != nil {
				return finish(err)
			}
			if cur != nil {
				return finish(errors.New("file begins inside another file"))
			}
			cur = &bulkJob{begin: b}
			if b.Size >= bulkStream {
				cur.chunks = make(chan chunk, 16)
				if !flush() || !send([]*bulkJob{cur}) {
					return finish(nil)
				}
			}
		case wire.TFileData:
			if cur == nil {
				return finish(errors.New("file data outside a file"))
			}
			// Never hold more than the file's declared size: a small
			// file's data waits here for its FileEnd, so a master that
			// sent more would make us buffer without bound.
			n := int64(len(d.Data))
			if d.Offset < 0 || d.Offset+n > cur.begin.Size || cur.received+n > cur.begin.Size {
				return finish(fmt.Errorf("%w: data for %q beyond its declared size of %d bytes", wire.ErrMalformed, cur.begin.Path, cur.begin.Size))
			}
			cur.received += n
			ch := chunk{FileData: d, buf: got}
			if cur.chunks == nil {
				cur.data = append(cur.data, ch)
				continue
			}
			select {
			case cur.chunks <- ch:
			case <-failed:
				return finish(nil)
			}
		case wire.TFileEnd:
			if cur == nil {
				return finish(errors.New("file end outside a file"))
			}
			if cur.chunks != nil {
				close(cur.chunks)
				cur = nil
				continue
			}
			batch = append(batch, cur)
			batched += cur.begin.Size
			cur = nil
			// Hand the batch over when it is full, or when the next read
			// would wait: the writers should not idle meanwhile.
			if (len(batch) >= batchFiles || batched >= batchBytes || s.r.Buffered() == 0) && !flush() {
				return finish(nil)
			}
		case wire.TFileGone:
			c.mu.Lock()
			c.st.Progress.FilesDone++
			c.mu.Unlock()
		default:
			return finish(fmt.Errorf("unexpected %s from master", f.Type))
		}
	}
}

// bufPool recycles the data buffers of an initial sync between its reader
// and its writers, in a few sizes (a frame's body: FileData header and
// data), so that a tree of tiny files does not hold a large buffer per
// file while it waits in a batch.
type bufPool struct {
	classes [3]chan []byte
}

// tinyBuf is the size up to which buffers are not recycled.
const tinyBuf = 4 << 10

var poolSizes = [3]struct{ size, keep int }{
	{16 << 10, 64},              // small files
	{68 << 10, 32},              // files up to 64 KiB
	{dataChunk + (4 << 10), 24}, // full frames
}

func newBufPool() *bufPool {
	p := &bufPool{}
	for i, c := range poolSizes {
		p.classes[i] = make(chan []byte, c.keep)
	}
	return p
}

func (p *bufPool) get(n int) []byte {
	if n <= tinyBuf {
		return make([]byte, n) // not worth keeping: the GC has it back soon
	}
	for i, c := range poolSizes {
		if n <= c.size {
			select {
			case b := <-p.classes[i]:
				return b[:n]
			default:
				return make([]byte, n, c.size)
			}
		}
	}
	return make([]byte, n)
}

func (p *bufPool) put(b []byte) {
	for i, c := range poolSizes {
		if cap(b) == c.size {
			select {
			case p.classes[i] <- b[:c.size]:
			default:
			}
			return
		}
	}
}

// writeBulk writes one file of an initial sync. On error it still drains
// the job so the reader never blocks on it.
func (c *Clone) writeBulk(job *bulkJob, bufs *bufPool) (err error) {
	defer func() {
		if job.chunks != nil {
			for range job.chunks {
			}
		}
	}()
	fw, err := c.ap.BeginFile(job.begin, true)
	if err != nil {
		return applyError{err}
	}
	write := func(ch chunk) error {
		n := len(ch.Data)
		err := fw.Write(ch.FileData)
		bufs.put(ch.buf)
		if err != nil {
			fw.Abort()
			if errors.Is(err, tree.ErrBadBlock) || errors.Is(err, wire.ErrMalformed) {
				return err // transport problem: the resync re-requests
			}
			return applyError{err}
		}
		c.cfg.Metrics.BytesReceived.Add(float64(n))
		c.mu.Lock()
		c.st.Progress.BytesDone += int64(n)
		c.mu.Unlock()
		return nil
	}
	for _, ch := range job.data {
		if err := write(ch); err != nil {
			return err
		}
	}
	if job.chunks != nil {
		for ch := range job.chunks {
			if err := write(ch); err != nil {
				return err
			}
		}
	}
	if err := fw.Commit(); err != nil {
		return applyError{err}
	}
	c.mu.Lock()
	c.st.Progress.FilesDone++
	c.mu.Unlock()
	c.progress(false)
	return nil
}
