package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
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
	// Capture: the app writes through a capture mount whose journal is this master
	// (journal.go); clones are cut over to the journal once caught up.
	Capture bool
	// SyncAcks, in capture mode, makes the mount's fsync wait until this many clones on the
	// journal acknowledged it (sync replication); 0 is async.
	SyncAcks int
	// SyncTimeout bounds that wait (default 10s); past it the fsync fails with EIO.
	SyncTimeout time.Duration
	// LogBytes bounds the journal data kept in the op log (default 64 MiB).
	LogBytes int64
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
	// pause is the capture mount's pause (SetPause); nil until the mount is up.
	pause func() (resume func())
	// ackWake is closed (and replaced) on every acknowledgement: WaitDurable waits on it.
	ackWake chan struct{}
	// logBytes is the journal data held in ops.
	logBytes int64
	// markReq registers a waiter for the watcher's marker event (watcherCaughtUp).
	markReq chan chan struct{}
	// watchKick wakes the watch loop when a clone connects, so changes it deferred while
	// every clone followed the journal reach the newcomer's stream (watcherIdle).
	watchKick chan struct{}
	// unreplicableCount and unreplicableNames are what Unreplicable reports.
	unreplicableCount int
	unreplicableNames []string
}

// NewMaster prepares a master; Run starts it.
func NewMaster(cfg MasterConfig) *Master {
	if cfg.RescanInterval <= 0 {
		cfg.RescanInterval = 30 * time.Second
	}
	if cfg.LogOps <= 0 {
		cfg.LogOps = 100000
	}
	if cfg.LogBytes <= 0 {
		cfg.LogBytes = defaultLogBytes
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = defaultSyncTimeout
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
		ackWake: make(chan struct{}), markReq: make(chan chan struct{}), watchKick: make(chan struct{}, 1),
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
	for _, o := range ops {
		m.logBytes += int64(len(o.payload))
	}
	// Trim in steps of a quarter of the log, so appending stays cheap; the journal's data is
	// bounded too (a clone further behind resyncs through the manifest).
	over := len(m.ops) - m.cfg.LogOps
	if over <= m.cfg.LogOps/4 {
		over = 0
	}
	if m.logBytes > m.cfg.LogBytes {
		for b := m.logBytes; over < len(m.ops) && b > m.cfg.LogBytes*3/4; over++ {
			b -= int64(len(m.ops[over].payload))
		}
	}
	if over > 0 {
		for _, o := range m.ops[:over] {
			m.logBytes -= int64(len(o.payload))
		}
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
