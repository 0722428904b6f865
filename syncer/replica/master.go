package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/zeebo/xxh3"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// MasterConfig configures a Master.
type MasterConfig struct {
	Dir      string   // absolute path of the data directory (for inotify)
	Root     *os.Root // the same directory; all reads go through it
	Term     uint64
	Listener net.Listener
	Secret   []byte
	Logger   hclog.Logger
	Metrics  *Metrics
	Owners   bool // replicate uid/gid
	// RescanInterval is the safety-net full rescan period.
	RescanInterval time.Duration
	// LogOps bounds the in-memory op log; a clone further behind resyncs
	// through the manifest.
	LogOps int
	// OnFenced is called once when a peer shows a newer term.
	OnFenced func(term uint64)
	// Relisten, if set, opens the listener again when it closed under the
	// master (not by the master itself); see relistenFor.
	Relisten func() (net.Listener, error)
}

// Master serves the data directory to clones.
type Master struct {
	cfg     MasterConfig
	log     hclog.Logger
	open    *tree.Opener // reads of file content
	session uint64
	watcher *fsnotify.Watcher
	buf     []byte
	stop    chan struct{}
	// flushReq asks the watch goroutine to cut every change queued so far into ops (Drain).
	flushReq chan chan struct{}
	// renamedDirs are (from, to) directory renames whose watches need
	// re-registering; only the watch goroutine touches it.
	renamedDirs [][2]string
	// watched are directories with an inotify watch (watch goroutine only).
	watched map[string]bool
	// skipped are names already reported as unreplicable (watch goroutine).
	skipped map[string]bool

	mu     sync.Mutex
	cache  map[string]*tree.Entry
	ops    []*op // ops[i].seq == first+i
	first  uint64
	head   uint64
	notify chan struct{} // closed when ops grow
	ready  chan struct{} // closed after the first scan
	fenced bool
	clones map[*cloneConn]struct{}
	ln     net.Listener // the current listener (Relisten replaces it)
	// listenErr is why clones cannot connect right now; failed is why
	// the master stopped serving for good (its watcher died).
	listenErr, failed error
	pre               preAuth
	stopOnce          sync.Once
	// acked is the highest position of this term any clone has acknowledged (applied,
	// synced and recorded), whether or not it is still connected: the high-water mark the
	// election publishes (see lease/highwater.go).
	acked core.Position
}

// NewMaster prepares a master; Run starts it.
func NewMaster(cfg MasterConfig) *Master {
	if cfg.RescanInterval <= 0 {
		cfg.RescanInterval = 30 * time.Second
	}
	if cfg.LogOps <= 0 {
		cfg.LogOps = 100000
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	return &Master{
		cfg: cfg, log: cfg.Logger, open: tree.NewOpener(cfg.Root), session: randomSession(), buf: make([]byte, 256*tree.BlockSize),
		stop: make(chan struct{}), flushReq: make(chan chan struct{}), cache: make(map[string]*tree.Entry), first: 1, watched: make(map[string]bool),
		notify: make(chan struct{}), ready: make(chan struct{}), clones: make(map[*cloneConn]struct{}),
	}
}

// cacheSnapshotMap returns the cache for use as a scan's Prev. Only the
// watch goroutine writes the cache, so it may read it without the lock.
func (m *Master) cacheSnapshotMap() map[string]*tree.Entry { return m.cache }

func (m *Master) cacheDelete(p string) {
	for k := range m.cache {
		if tree.Under(k, p) {
			delete(m.cache, k)
		}
	}
}

func (m *Master) cacheRename(from, to string) {
	m.cacheDelete(to)
	moved := make(map[string]*tree.Entry)
	for k, e := range m.cache {
		if tree.Under(k, from) {
			n := *e
			n.Path = to + k[len(from):]
			moved[n.Path] = &n
			delete(m.cache, k)
		}
	}
	for k, e := range moved {
		m.cache[k] = e
	}
}

// appendOps assigns sequence numbers and wakes senders. Called with mu held.
func (m *Master) appendOps(ops []*op) {
	if len(ops) == 0 {
		return
	}
	now := time.Now()
	for _, o := range ops {
		m.head++
		o.seq, o.at = m.head, now
		m.ops = append(m.ops, o)
		if m.log.IsDebug() {
			m.log.Debug("op", "seq", o.seq, "kind", o.kind.String(), "path", o.path, "to", o.to, "ranges", len(o.ranges), "whole", o.whole)
		}
	}
	// Trim in steps of a quarter of the log, so appending stays cheap.
	if over := len(m.ops) - m.cfg.LogOps; over > m.cfg.LogOps/4 {
		m.ops = append([]*op(nil), m.ops[over:]...)
		m.first += uint64(over)
	}
	m.cfg.Metrics.Ops.Add(float64(len(ops)))
	m.cfg.Metrics.Seq.Set(float64(m.head))
	close(m.notify)
	m.notify = make(chan struct{})
}

// Position is the master's head.
func (m *Master) Position() core.Position {
	m.mu.Lock()
	defer m.mu.Unlock()
	return core.Position{Term: m.cfg.Term, Seq: m.head}
}

// HighWater is the highest position of this term that a clone has acknowledged: a clone
// acknowledges only what it applied, synced and recorded, so a copy at this position exists
// outside this master. Zero until the first acknowledgement.
func (m *Master) HighWater() core.Position {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.acked
}

// Fenced reports whether a newer term was seen.
func (m *Master) Fenced() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fenced
}

// Ready is closed once the first full scan is done.
func (m *Master) Ready() <-chan struct{} { return m.ready }

// Run watches and serves until ctx ends or the master is fenced.
func (m *Master) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() { _ = m.open.Close() }()
	m.cfg.Metrics.Term.Set(float64(m.cfg.Term))
	errc := make(chan error, 1)
	go func() {
		err := m.watchLoop(ctx)
		if err != nil {
			m.log.Error("watcher stopped", "error", err)
		}
		errc <- err
	}()
	// Wait for the first scan before serving: a manifest of a half-scanned
	// tree would make clones delete what is not scanned yet.
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return fmt.Errorf("watch %s: %w", m.cfg.Dir, err)
	case <-m.ready:
	}
	m.log.Info("master serving", "term", m.cfg.Term, "addr", m.cfg.Listener.Addr().String())
	m.setListener(m.cfg.Listener)
	m.cfg.Metrics.ListenerUp.Set(1)
	go func() {
		// After the first scan the watcher must keep running: a master
		// whose watcher died would serve a frozen tree, i.e. replicate
		// nothing while it holds the lock. It stops serving instead.
		select {
		case <-ctx.Done():
			return
		case <-m.stop:
			return
		case err := <-errc:
			if err == nil {
				return // stopped by ctx or m.stop
			}
			m.mu.Lock()
			m.failed = fmt.Errorf("watch %s: %w", m.cfg.Dir, err)
			m.mu.Unlock()
			m.stopOnce.Do(func() { close(m.stop) })
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
		case <-m.stop:
		}
		m.closeListener()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	delay := time.Duration(0)
	for {
		ln := m.listener()
		conn, err := ln.Accept()
		if err != nil {
			if m.Fenced() {
				cancel()
				m.closeClones()
				return ErrFenced
			}
			if f := m.failure(); f != nil {
				cancel()
				m.closeClones()
				return f
			}
			if ctx.Err() != nil {
				cancel()
				m.closeClones()
				return nil
			}
			m.cfg.Metrics.AcceptErrors.Inc()
			m.setListenErr(err)
			if errors.Is(err, net.ErrClosed) {
				// The listener is gone, not by our doing: listen again
				// (same address, same session, so clones resume), or
				// stop serving, which the caller reports and acts on.
				if err := m.relisten(ctx, ln); err != nil {
					cancel()
					m.closeClones()
					return err
				}
				continue
			}
			// Anything else (out of file descriptors, say) passes: retry
			// with a backoff, as net/http does, and say so meanwhile.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			m.log.Warn("accepting clones fails; retrying", "error", err, "in", delay.String())
			select {
			case <-ctx.Done():
			case <-m.stop:
			case <-time.After(delay):
			}
			continue
		}
		if delay > 0 || m.ListenErr() != nil {
			m.log.Info("accepting clones again")
			delay = 0
			m.setListenErr(nil)
		}
		release, ok, evicted := m.pre.acquire(conn)
		if evicted {
			m.cfg.Metrics.PreAuthRefused.Inc()
		}
		if !ok {
			// This address has too many handshakes under way: refuse
			// at once rather than queue.
			m.cfg.Metrics.PreAuthRefused.Inc()
			conn.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.serve(ctx, conn, release)
		}()
	}
}

// relisten replaces a listener that closed under us, retrying with a
// backoff for up to relistenFor; it needs MasterConfig.Relisten.
func (m *Master) relisten(ctx context.Context, old net.Listener) error {
	if m.cfg.Relisten == nil {
		return fmt.Errorf("accept on %s: %w", old.Addr(), net.ErrClosed)
	}
	_ = old.Close()
	start := time.Now()
	delay := 50 * time.Millisecond
	for {
		ln, err := m.cfg.Relisten()
		if err == nil {
			m.setListener(ln)
			m.setListenErr(nil)
			select {
			case <-ctx.Done():
				m.closeListener()
			case <-m.stop:
				m.closeListener()
			default:
			}
			m.log.Warn("replication listener replaced", "addr", ln.Addr().String())
			return nil
		}
		m.setListenErr(err)
		if time.Since(start) > relistenFor {
			return fmt.Errorf("listening again for clones: %w", err)
		}
		m.log.Warn("listening again for clones failed; retrying", "error", err, "in", delay.String())
		select {
		case <-ctx.Done():
			return nil
		case <-m.stop:
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// relistenFor bounds how long a master without a listener keeps trying:
// past it, it stops serving and steps down rather than keep the lock and
// replicate nothing.
const relistenFor = 30 * time.Second

func (m *Master) listener() net.Listener {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ln
}

func (m *Master) setListener(ln net.Listener) {
	m.mu.Lock()
	m.ln = ln
	m.mu.Unlock()
}

func (m *Master) closeListener() {
	m.mu.Lock()
	ln := m.ln
	m.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
}

func (m *Master) failure() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failed
}

// setListenErr records (or clears) why clones cannot connect right now.
func (m *Master) setListenErr(err error) {
	m.mu.Lock()
	m.listenErr = err
	m.mu.Unlock()
	if err != nil {
		m.cfg.Metrics.ListenerUp.Set(0)
	} else {
		m.cfg.Metrics.ListenerUp.Set(1)
	}
}

// ListenErr is why clones cannot connect right now (nil: they can), for
// the syncer's status.
func (m *Master) ListenErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.listenErr
}

// Pre-authentication bounds: what peers that have not proved the secret
// may cost the master at once. Each such connection holds a goroutine, a
// socket and a few KiB (its handshake frames) for at most preAuthTimeout.
// One address gets maxPreAuthPerIP of them (more are refused), so a single
// peer cannot fill the table; when many addresses do, the oldest pending
// handshake is dropped for the newest, so a genuine clone, whose handshake
// takes one round trip, still gets through.
const (
	maxPreAuth      = 64
	maxPreAuthPerIP = 8
	preAuthTimeout  = 5 * time.Second
)

// preAuth tracks unauthenticated connections, oldest first.
type preAuth struct {
	mu      sync.Mutex
	byIP    map[string]int
	pending []*pendingConn
}

type pendingConn struct {
	conn net.Conn
	ip   string
	done bool
}

// acquire takes a slot for a new connection; release gives it back
// (idempotent: serve calls it once authenticated and again at exit).
// evicted says an older pending connection was closed to make room.
func (p *preAuth) acquire(conn net.Conn) (release func(), ok, evicted bool) {
	ip := conn.RemoteAddr().String()
	if ta, isTCP := conn.RemoteAddr().(*net.TCPAddr); isTCP {
		ip = ta.IP.String()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byIP == nil {
		p.byIP = make(map[string]int)
	}
	if p.byIP[ip] >= maxPreAuthPerIP {
		return nil, false, false
	}
	if len(p.pending) >= maxPreAuth {
		old := p.pending[0]
		p.removeLocked(old)
		_ = old.conn.Close() // its serve goroutine ends on the closed conn
		evicted = true
	}
	pc := &pendingConn{conn: conn, ip: ip}
	p.pending = append(p.pending, pc)
	p.byIP[ip]++
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.removeLocked(pc)
	}, true, evicted
}

func (p *preAuth) removeLocked(pc *pendingConn) {
	if pc.done {
		return
	}
	pc.done = true
	if p.byIP[pc.ip]--; p.byIP[pc.ip] <= 0 {
		delete(p.byIP, pc.ip)
	}
	for i, q := range p.pending {
		if q == pc {
			p.pending = append(p.pending[:i], p.pending[i+1:]...)
			break
		}
	}
}

func (m *Master) fence(term uint64) {
	m.mu.Lock()
	if m.fenced {
		m.mu.Unlock()
		return
	}
	m.fenced = true
	m.mu.Unlock()
	m.log.Warn("newer term seen, master stops serving", "term", m.cfg.Term, "newer", term)
	m.stopOnce.Do(func() { close(m.stop) })
	m.closeClones()
	if m.cfg.OnFenced != nil {
		m.cfg.OnFenced(term)
	}
}

func (m *Master) closeClones() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.clones {
		c.conn.Close()
	}
}

// cloneConn is the master's view of one connected clone.
type cloneConn struct {
	m      *Master
	conn   net.Conn
	id     string
	w      *bufio.Writer
	wmu    sync.Mutex
	acked  core.Position
	synced bool
	sent   int64
	files  int64
	since  time.Time
	rbuf   []byte
	hdr    []byte
	fbuf   []byte
	hashes []uint64
	// seal and open are the connection's two directions after the
	// handshake (wire/secure.go); seal under wmu, open by the reader.
	seal *wire.Sealer
	open *wire.Opener
	// reads remembers what this connection sent of each file and when the read began (see
	// sentReads); only the stream goroutine touches it.
	reads sentReads
	// this clone's series
	bytesSent, filesSent prometheus.Counter
}

// CloneStatus is the master's view of a clone.
type CloneStatus struct {
	ID         string  `json:"id"`
	Addr       string  `json:"addr"`
	Acked      uint64  `json:"acked_seq"`
	LagOps     uint64  `json:"lag_ops"`
	LagSeconds float64 `json:"lag_seconds"`
	Synced     bool    `json:"synced"`
	BytesSent  int64   `json:"bytes_sent"`
	FilesSent  int64   `json:"files_sent"`
}

// Clones reports every connected clone's lag.
func (m *Master) Clones() []CloneStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []CloneStatus
	now := time.Now()
	for c := range m.clones {
		s := CloneStatus{ID: c.id, Addr: c.conn.RemoteAddr().String(), Acked: c.acked.Seq, Synced: c.synced, BytesSent: c.sent, FilesSent: c.files}
		if c.acked.Seq < m.head {
			s.LagOps = m.head - c.acked.Seq
			if i := c.acked.Seq + 1; i >= m.first && i-m.first < uint64(len(m.ops)) {
				s.LagSeconds = now.Sub(m.ops[i-m.first].at).Seconds()
			} else {
				s.LagSeconds = now.Sub(c.since).Seconds()
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// send writes one sealed frame (callers hold wmu).
func (c *cloneConn) send(t wire.Type, seq uint64, payload []byte) error {
	b, err := c.seal.Append(c.fbuf[:0], wire.Frame{Type: t, Term: c.m.cfg.Term, Seq: seq, Payload: payload})
	if err != nil {
		return err
	}
	c.fbuf = b
	if _, err := c.w.Write(c.fbuf); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

func (c *cloneConn) flush() error {
	return c.w.Flush()
}

// serve runs one clone connection: authenticate, then manifest or resume,
// then the live stream. Nothing but the handshake is read from a peer that
// has not proved it knows the secret, and it costs next to nothing: the
// handshake is read without a buffer (the clone sends nothing past its Auth
// before our AuthOK), under preAuthTimeout, and the connection's buffers
// (over half a MiB) are allocated only after the peer authenticated.
// release gives back the connection's pre-authentication slot.
func (m *Master) serve(ctx context.Context, conn net.Conn, release func()) {
	defer conn.Close()
	defer release()
	log := m.log.With("peer", conn.RemoteAddr().String())
	_ = conn.SetDeadline(time.Now().Add(preAuthTimeout))
	hello := wire.Hello{Version: wire.Version, Session: m.session, Nonce: nonce()}
	helloF := wire.Frame{Type: wire.THello, Term: m.cfg.Term, Seq: m.Position().Seq, Payload: hello.Marshal()}
	if _, err := conn.Write(wire.AppendFrame(nil, helloF)); err != nil {
		return
	}
	f, _, err := wire.ReadFrame(conn, wire.MaxAuthPayload, nil)
	if err != nil || f.Type != wire.TAuth {
		log.Warn("rejecting peer: no valid auth frame", "error", err)
		m.cfg.Metrics.AuthFailures.Inc()
		return
	}
	var auth wire.Auth
	if err := auth.Unmarshal(f.Payload); err != nil {
		log.Warn("rejecting peer: malformed auth", "error", err)
		m.cfg.Metrics.AuthFailures.Inc()
		return
	}
	keys, err := HandshakeKeys(m.cfg.Secret, helloF, hello, f, auth)
	if err != nil || !wire.CheckMAC(keys.ClientMAC, auth.MAC) {
		log.Warn("rejecting peer: authentication failed", "client", auth.ClientID)
		m.cfg.Metrics.AuthFailures.Inc()
		_, _ = conn.Write(wire.AppendFrame(nil, wire.Frame{Type: wire.TError, Payload: (&wire.ErrorMsg{Msg: "authentication failed"}).Marshal()}))
		return
	}
	ok := wire.AuthOK{MAC: keys.ServerMAC}
	if _, err := conn.Write(wire.AppendFrame(nil, wire.Frame{Type: wire.TAuthOK, Payload: ok.Marshal()})); err != nil {
		return
	}
	seal, open, err := keys.Server()
	if err != nil {
		log.Error("cannot set up the connection's cipher", "error", err)
		return
	}
	release()
	c := &cloneConn{m: m, conn: conn, since: time.Now(), rbuf: make([]byte, dataChunk), seal: seal, open: open, id: auth.ClientID}
	log = log.With("clone", c.id)
	c.w = bufio.NewWriterSize(countingWriter{conn, m.cfg.Metrics.WireSent.WithLabelValues(c.id)}, 256*1024)
	r := bufio.NewReaderSize(conn, 64*1024)
	c.bytesSent = m.cfg.Metrics.BytesSent.WithLabelValues(c.id)
	c.filesSent = m.cfg.Metrics.FilesSent.WithLabelValues(c.id)
	if f.Term > m.cfg.Term {
		m.fence(f.Term)
		return
	}
	m.mu.Lock()
	if m.fenced {
		m.mu.Unlock()
		return
	}
	m.clones[c] = struct{}{}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.clones, c)
		m.mu.Unlock()
		m.cfg.Metrics.LagSeq.DeleteLabelValues(c.id)
		m.cfg.Metrics.LagSeconds.DeleteLabelValues(c.id)
	}()
	_ = conn.SetDeadline(time.Time{})

	// The first request decides between resume and manifest.
	_ = conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	f, _, err = c.open.ReadFrame(r, wire.MaxPayload, nil)
	if err != nil {
		log.Warn("clone dropped before its request", "error", err)
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	resumeFrom := uint64(0)
	resume := false
	if f.Type == wire.TResume {
		var rq wire.Resume
		if rq.Unmarshal(f.Payload) == nil && rq.Session == m.session && f.Term == m.cfg.Term {
			m.mu.Lock()
			resume = f.Seq+1 >= m.first && f.Seq <= m.head
			m.mu.Unlock()
			resumeFrom = f.Seq
		}
	} else if f.Type != wire.TNeedManifest {
		log.Warn("unexpected first request", "type", f.Type.String())
		return
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reqs := make(chan wire.Request, 1024)
	readErr := make(chan error, 1)
	go func() { readErr <- c.readLoop(ctx, r, reqs); cancel() }()

	var err2 error
	if resume {
		log.Info("clone resumes", "from", resumeFrom)
		m.mu.Lock()
		c.acked = core.Position{Term: m.cfg.Term, Seq: resumeFrom}
		c.synced = true
		m.mu.Unlock()
		c.wmu.Lock()
		err2 = c.send(wire.TResume, resumeFrom, nil)
		c.wmu.Unlock()
		if err2 == nil {
			err2 = c.stream(ctx, resumeFrom+1)
		}
	} else {
		err2 = c.initialSync(ctx, reqs)
	}
	cancel()
	rerr := <-readErr
	if err2 != nil && !errors.Is(err2, context.Canceled) {
		log.Warn("clone connection ended", "error", err2)
	} else if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
		log.Warn("clone connection ended", "error", rerr)
	} else {
		log.Info("clone disconnected")
	}
}

// readLoop handles frames from an authenticated clone: requests go to the
// sender until RequestsDone, acks update its position.
func (c *cloneConn) readLoop(ctx context.Context, r *bufio.Reader, reqs chan<- wire.Request) error {
	m := c.m
	open := true
	defer func() {
		if open {
			close(reqs)
		}
	}()
	var buf []byte
	for {
		// The clone acks at least every heartbeat; a long silence means it
		// is gone (or frozen) and the connection is dropped.
		_ = c.conn.SetReadDeadline(time.Now().Add(bulkTimeout))
		limit := wire.MaxPayload
		if !open {
			limit = wire.MaxAuthPayload
		}
		f, b, err := c.open.ReadFrame(r, limit, buf)
		buf = b
		if err != nil {
			return err
		}
		if f.Term > m.cfg.Term {
			m.fence(f.Term)
			return ErrFenced
		}
		switch f.Type {
		case wire.TRequest:
			if !open {
				return errors.New("request after requests-done")
			}
			var rq wire.Request
			if err := rq.Unmarshal(f.Payload); err != nil {
				return err
			}
			if err := tree.ValidName(rq.Path); err != nil {
				return fmt.Errorf("clone request: %w", err)
			}
			select {
			case reqs <- rq:
			case <-ctx.Done():
				return ctx.Err()
			}
		case wire.TRequestsDone:
			if open {
				open = false
				close(reqs)
			}
		case wire.TAck:
			c.ack(f)
		case wire.TError:
			var em wire.ErrorMsg
			_ = em.Unmarshal(f.Payload)
			return fmt.Errorf("clone reports: %s", em.Msg)
		default:
			return fmt.Errorf("unexpected %s from clone", f.Type)
		}
	}
}

func (c *cloneConn) ack(f wire.Frame) {
	m := c.m
	m.mu.Lock()
	if f.Term == m.cfg.Term && f.Seq <= m.head && f.Seq >= c.acked.Seq {
		c.acked = core.Position{Term: f.Term, Seq: f.Seq}
		if m.acked.Less(c.acked) {
			m.acked = c.acked
		}
	}
	lag := m.head - c.acked.Seq
	m.mu.Unlock()
	m.cfg.Metrics.LagSeq.WithLabelValues(c.id).Set(float64(lag))
}

// initialSync sends the manifest at snapshot S, serves the clone's block
// requests, then continues with the live stream from S+1.
func (c *cloneConn) initialSync(ctx context.Context, reqs <-chan wire.Request) error {
	m := c.m
	m.mu.Lock()
	snap := make(map[string]*tree.Entry, len(m.cache))
	for k, v := range m.cache {
		snap[k] = v
	}
	s := m.head
	m.mu.Unlock()
	c.wmu.Lock()
	err := tree.EncodeManifest(tree.Sorted(snap), manifestChunk, func(b []byte) error {
		return c.send(wire.TManifestChunk, s, b)
	})
	if err == nil {
		err = c.send(wire.TManifestEnd, s, nil)
	}
	if err == nil {
		err = c.flush()
	}
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("send manifest: %w", err)
	}
	m.log.Info("manifest sent", "clone", c.id, "entries", len(snap), "seq", s)
	for {
		var rq wire.Request
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rq, ok = <-reqs:
		}
		if !ok {
			break
		}
		e := snap[rq.Path]
		if e == nil || e.Type != tree.TypeFile || rq.KnownBlocks != uint64(len(e.Hashes)) {
			return fmt.Errorf("clone requested %q, which is not a file of the manifest", rq.Path)
		}
		c.wmu.Lock()
		err := c.sendFile(s, rq.Path, rq.Ranges, rq.KnownBlocks, rq.Whole, nil)
		if err == nil && len(reqs) == 0 {
			err = c.flush()
		}
		c.wmu.Unlock()
		if err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	c.wmu.Lock()
	err = c.send(wire.TSynced, s, nil)
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	m.mu.Lock()
	c.synced = true
	m.mu.Unlock()
	return c.stream(ctx, s+1)
}

// stream sends ops from seq next on, flushing whenever it catches up so a
// lone change leaves at once, and heartbeats while idle.
func (c *cloneConn) stream(ctx context.Context, next uint64) error {
	m := c.m
	hb := time.NewTicker(heartbeatEvery)
	defer hb.Stop()
	for {
		m.mu.Lock()
		if m.fenced {
			m.mu.Unlock()
			return ErrFenced
		}
		if next < m.first {
			m.mu.Unlock()
			c.wmu.Lock()
			_ = c.send(wire.TResyncRequired, next, nil)
			_ = c.flush()
			c.wmu.Unlock()
			return errors.New("clone fell behind the op log; it will resync")
		}
		var o *op
		if next <= m.head {
			o = m.ops[next-m.first]
		}
		notify := m.notify
		head := m.head
		m.mu.Unlock()
		if o != nil {
			c.wmu.Lock()
			err := c.sendOp(o)
			if err == nil && next == head {
				err = c.flush()
			}
			c.wmu.Unlock()
			if err != nil {
				return err
			}
			next++
			continue
		}
		c.wmu.Lock()
		err := c.flush()
		c.wmu.Unlock()
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-notify:
		case <-hb.C:
			c.wmu.Lock()
			err := c.send(wire.THeartbeat, head, nil)
			if err == nil {
				err = c.flush()
			}
			c.wmu.Unlock()
			if err != nil {
				return err
			}
		}
	}
}

func metaOf(e *tree.Entry) wire.Meta {
	return wire.Meta{Path: e.Path, Mode: uint32(e.Mode), MtimeNs: e.MtimeNs, UID: e.UID, GID: e.GID}
}

func (c *cloneConn) sendOp(o *op) error {
	switch o.kind {
	case wire.TDelete, wire.TSymlink, wire.TMkdir:
		c.reads.forget(o.path) // what was sent went to a file that is gone
	case wire.TRename:
		c.reads.forget(o.path)
		c.reads.forget(o.to)
	}
	switch o.kind {
	case wire.TFileBegin:
		return c.sendFile(o.seq, o.path, o.ranges, o.known, o.whole, o)
	case wire.TMkdir, wire.TMeta:
		m := metaOf(o.entry)
		return c.send(o.kind, o.seq, m.Marshal())
	case wire.TSymlink:
		e := o.entry
		return c.send(o.kind, o.seq, (&wire.Symlink{Path: e.Path, Target: e.Target, MtimeNs: e.MtimeNs, UID: e.UID, GID: e.GID}).Marshal())
	case wire.TDelete:
		return c.send(o.kind, o.seq, (&wire.PathMsg{Path: o.path}).Marshal())
	case wire.TRename:
		return c.send(o.kind, o.seq, (&wire.Rename{From: o.path, To: o.to}).Marshal())
	}
	return fmt.Errorf("unknown op %s", o.kind)
}

// sendFile sends the requested blocks of a file as it is now, plus any
// blocks past known (the file grew). A file that vanished is reported gone;
// the op that removed it follows. For a live op (o set), blocks this
// connection already sent from a read that began after o was cut are left
// out: that data is already newer than o (see sentReads).
func (c *cloneConn) sendFile(seq uint64, name string, ranges []wire.Range, known uint64, whole bool, o *op) error {
	readAt := time.Now() // before the open: every byte read below is at least this recent
	f, err := c.m.open.Open(name)
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = errors.New("not a regular file")
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		c.reads.forget(name)
		return c.send(wire.TFileGone, seq, (&wire.PathMsg{Path: name}).Marshal())
	}
	defer f.Close()
	e := tree.FromInfo(name, fi)
	nb := uint64(tree.Blocks(e.Size))
	if whole {
		// The clone builds a new file from what this op sends: it needs every block.
		c.reads.forget(name)
		ranges = []wire.Range{{Start: 0, Count: nb}}
	} else if nb > known {
		ranges = append(append([]wire.Range(nil), ranges...), wire.Range{Start: known, Count: nb - known})
	}
	if o != nil && !whole {
		ranges = c.reads.uncovered(name, ranges, o.at)
	}
	begin := wire.FileBegin{Path: name, Size: e.Size, Mode: uint32(e.Mode), MtimeNs: e.MtimeNs, UID: e.UID, GID: e.GID, Whole: whole}
	if err := c.send(wire.TFileBegin, seq, begin.Marshal()); err != nil {
		return err
	}
	var sent int64
	err = readBlocks(f, name, ranges, e.Size, c.rbuf, func(off int64, data []byte) error {
		hashes := c.hashes[:0]
		for o := 0; o < len(data); o += tree.BlockSize {
			hashes = append(hashes, xxh3.Hash(data[o:min(o+tree.BlockSize, len(data))]))
		}
		c.hashes = hashes
		fd := wire.FileData{Offset: off, Hashes: hashes, Data: data}
		c.hdr = fd.AppendHeader(c.hdr[:0])
		sent += int64(len(data))
		if full := uint64(len(data) / tree.BlockSize); full > 0 { // the last, partial block may grow
			c.reads.remember(name, readAt, wire.Range{Start: uint64(off / tree.BlockSize), Count: full})
		}
		return c.seal.WriteFrameParts(c.w, wire.TFileData, c.m.cfg.Term, seq, c.hdr, data)
	})
	if err != nil {
		return err
	}
	if err := c.send(wire.TFileEnd, seq, nil); err != nil {
		return err
	}
	c.m.mu.Lock()
	c.sent += sent
	c.files++
	c.m.mu.Unlock()
	c.bytesSent.Add(float64(sent))
	c.filesSent.Inc()
	return nil
}

// sentReads makes a connection send each block of a growing file once per change, not once
// per op. A clone that lags receives a burst of ops for one file (each growth of a log or a
// database is an op naming the new blocks, and every op also carries whatever lies past the
// size it saw); each is sent by reading the file as it is NOW. Before, a 32 MiB file written
// during a one-second stall was sent twelve times over (383 MB).
//
// The rule: an op o describes a change made before o was cut (o.at). Data read from a read
// that began after o.at already includes that change (or a later one), so a block this
// connection sent from such a read need not be sent again for o. A later change of the block
// is cut into a later op, after the read, and is sent with it. Only full blocks count as sent
// (the last, partial block may grow); a whole-file op (the clone builds a new file), a rename,
// a delete or a type change forgets the path, since what was sent went into another file.
// Reads that began before the op being sent can never cover it or any later op (ops are sent
// in order, o.at never decreases) and are dropped as they are met.
type sentReads map[string][]sentRead

// sentRead is one send of a file's blocks and when the read began.
type sentRead struct {
	at     time.Time
	ranges []wire.Range
}

// maxSentPaths bounds the memory of sentReads: past it, reads too old to cover the current op
// are swept from every path.
const maxSentPaths = 4096

func (r *sentReads) forget(name string) {
	for k := range *r {
		if tree.Under(k, name) {
			delete(*r, k)
		}
	}
}

// remember records blocks rg as sent from a read that began at at.
func (r *sentReads) remember(name string, at time.Time, rg wire.Range) {
	if *r == nil {
		*r = make(sentReads)
	}
	reads := (*r)[name]
	if k := len(reads) - 1; k >= 0 && reads[k].at.Equal(at) {
		reads[k].ranges = append(reads[k].ranges, rg)
		return
	}
	(*r)[name] = append(reads, sentRead{at: at, ranges: []wire.Range{rg}})
}

// uncovered returns the blocks of ranges not sent from a read that began after since.
func (r *sentReads) uncovered(name string, ranges []wire.Range, since time.Time) []wire.Range {
	if len(*r) > maxSentPaths {
		for k, reads := range *r {
			if reads = dropBefore(reads, since); len(reads) == 0 {
				delete(*r, k)
			} else {
				(*r)[k] = reads
			}
		}
	}
	reads := dropBefore((*r)[name], since)
	if len(reads) == 0 {
		delete(*r, name)
		return ranges
	}
	(*r)[name] = reads
	var cov []wire.Range
	for _, rd := range reads {
		cov = append(cov, rd.ranges...)
	}
	sort.Slice(cov, func(i, j int) bool { return cov[i].Start < cov[j].Start })
	var out []wire.Range
	for _, rg := range ranges {
		start, end := rg.Start, rg.Start+rg.Count
		for _, cv := range cov {
			if start >= end {
				break
			}
			cs, ce := cv.Start, cv.Start+cv.Count
			if ce <= start || cs >= end {
				continue
			}
			if cs > start {
				out = append(out, wire.Range{Start: start, Count: cs - start})
			}
			start = max(start, ce)
		}
		if start < end {
			out = append(out, wire.Range{Start: start, Count: end - start})
		}
	}
	return out
}

// dropBefore keeps the reads that began after since.
func dropBefore(reads []sentRead, since time.Time) []sentRead {
	kept := reads[:0]
	for _, rd := range reads {
		if rd.at.After(since) {
			kept = append(kept, rd)
		}
	}
	return kept
}

// readBlocks reads the block ranges of f (of size bytes when opened) in
// pieces of up to len(buf) bytes and gives each to emit. A range of a file
// that shrank meanwhile ends early; the op of the change follows.
func readBlocks(f *os.File, name string, ranges []wire.Range, size int64, buf []byte, emit func(off int64, data []byte) error) error {
	nb := uint64(tree.Blocks(size))
	for _, r := range ranges {
		start, end := r.Start, min(r.Start+r.Count, nb)
		for start < end {
			n := min(end-start, uint64(len(buf)/tree.BlockSize))
			off := int64(start) * tree.BlockSize
			// Never past the size sent in FileBegin: the clone refuses
			// data beyond it. What grew is in the op of the change.
			b := buf[:min(int64(n)*tree.BlockSize, size-off)]
			k, err := f.ReadAt(b, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if k == 0 {
				break
			}
			if err := emit(off, b[:k]); err != nil {
				return err
			}
			if k < len(b) {
				break
			}
			start += n
		}
	}
	return nil
}

// countingWriter counts bytes that reach the connection (framing included),
// which is what the delta benchmark compares with the bytes changed, and
// gives every write its own deadline: a clone that takes nothing for
// bulkTimeout is dead, one that is merely slow is not.
type countingWriter struct {
	w net.Conn
	c interface{ Add(float64) }
}

func (cw countingWriter) Write(p []byte) (int, error) {
	_ = cw.w.SetWriteDeadline(time.Now().Add(bulkTimeout))
	n, err := cw.w.Write(p)
	cw.c.Add(float64(n))
	return n, err
}
