// Package syncer is the Bedrock syncer task: it keeps every clone's copy of
// the app's data directory identical to the master's, in real time.
//
// Who is master comes from a RoleSource (static flags for now; the election
// plugs a Consul implementation in later). The data path lives in the
// subpackages: wire (framing), tree (files), replica (master and clone).
package syncer

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/replica"
)

// RoleSource delivers role changes. The syncer follows the latest role it
// received; a closed channel means "keep the current role until ctx ends".
type RoleSource interface {
	Roles(ctx context.Context) <-chan core.Assignment
}

// StaticRole is a RoleSource that never changes (CLI flags, tests).
type StaticRole core.Assignment

// Roles sends the role once.
func (r StaticRole) Roles(ctx context.Context) <-chan core.Assignment {
	ch := make(chan core.Assignment, 1)
	ch <- core.Assignment(r)
	return ch
}

// CloneStatus is the master's view of one clone.
type CloneStatus = replica.CloneStatus

// Config configures a Syncer.
type Config struct {
	// DataDir is the directory to replicate (the allocation's shared dir).
	DataDir string
	// ListenAddr is where a master accepts clones (e.g. the "sync" port).
	ListenAddr string
	// Secret is the per-job shared secret both sides authenticate with.
	Secret []byte
	// ID names this instance in logs and metrics (default: hostname).
	ID string
	// Roles tells the syncer what to be.
	Roles RoleSource
	// MetricsAddr, if set, serves /metrics (Prometheus) and /status (JSON).
	MetricsAddr string
	// RescanInterval is the master's safety-net full rescan period.
	RescanInterval time.Duration
	// Logger receives hclog logs.
	Logger hclog.Logger
	// OnProgress is told about initial sync progress, for task events.
	OnProgress func(core.Progress)
	// TLS, if set, wraps every replication connection in mutual TLS: the
	// same config serves (Certificates, ClientCAs, ClientAuth) and dials
	// (Certificates, RootCAs, ServerName). The secret handshake still runs
	// inside; TLS adds confidentiality and per-record integrity on the wire.
	TLS *tls.Config
	// Mode is the replication mode: ModeWatch (default) replicates DataDir with a file
	// watcher; ModeAsync and ModeSync serve DataDir to the app through a capture mount at
	// CaptureMount while master, and replicate its journal (crash-consistent clones, see
	// replica/journal.go); in ModeSync an fsync through the mount returns only once SyncAcks
	// clones hold it (or fails with EIO after SyncTimeout).
	Mode         string
	CaptureMount string
	SyncAcks     int
	SyncTimeout  time.Duration
}

// The replication modes (Config.Mode, the syncer block's mode).
const (
	ModeWatch = "watch"
	ModeAsync = "async"
	ModeSync  = "sync"
)

// checkMode validates a mode and what it needs.
func checkMode(mode, mount, data string, acks int) error {
	switch mode {
	case "", ModeWatch:
		if mount != "" {
			return errors.New("-capture-mount is for the async and sync modes only")
		}
		return nil
	case ModeAsync, ModeSync:
	default:
		return fmt.Errorf("-mode %q: want watch, async or sync", mode)
	}
	if mount == "" {
		return fmt.Errorf("-mode %s needs -capture-mount (where the app's data is mounted)", mode)
	}
	if filepath.Clean(mount) == filepath.Clean(data) {
		return errors.New("-capture-mount must differ from -data (the copy behind the mount)")
	}
	if mode == ModeSync && acks < 1 {
		return fmt.Errorf("-sync-acks %d: sync mode needs at least 1", acks)
	}
	return nil
}

// Status is a point-in-time view for the driver, the election and humans.
type Status struct {
	ID       string        `json:"id"`
	Role     core.Role     `json:"role"` // master, clone, idle or fenced
	Term     uint64        `json:"term"`
	Position core.Position `json:"position"`
	CaughtUp bool          `json:"caught_up"`
	Synced   bool          `json:"synced"`
	Healthy  bool          `json:"healthy"`
	Error    string        `json:"error,omitempty"`
	Progress core.Progress `json:"initial_sync"`
	Clones   []CloneStatus `json:"clones,omitempty"`
	// Unreplicable is, on a master, how often it met a name it cannot replicate (longer than
	// PATH_MAX, ...), and UnreplicableNames the first few: clones do not have them.
	Unreplicable      int      `json:"unreplicable,omitempty"`
	UnreplicableNames []string `json:"unreplicable_names,omitempty"`
	// MasterSeq is, on a clone, the master's head as last heard (handshake,
	// live operations, heartbeats); Lag is how many operations the clone's
	// copy is behind it, once the initial sync is done.
	MasterSeq uint64 `json:"master_seq,omitempty"`
	Lag       uint64 `json:"lag,omitempty"`
	// Serving is, on a master, whether its first scan is done and clones
	// are being served: until then a clone that connects waits.
	Serving bool `json:"serving,omitempty"`
	// Stalled is, on a clone, true when nothing came from its master for a
	// few heartbeats (outside an initial sync); MasterSilence says how long.
	Stalled       bool    `json:"stalled,omitempty"`
	MasterSilence float64 `json:"master_silence_seconds,omitempty"`
}

// Syncer runs one instance's replication.
type Syncer struct {
	cfg     Config
	log     hclog.Logger
	root    *os.Root
	state   *replica.StateStore
	reg     *prometheus.Registry
	metrics *replica.Metrics

	mu     sync.Mutex
	role   core.Assignment
	fenced bool
	err    string
	master *replica.Master
	clone  *replica.Clone
	failed chan error // see fail
	// mounted is the capture mount while this master serves it (capture modes).
	mounted *capture.Server
}

// capture tells whether the syncer runs in a capture mode.
func (s *Syncer) capture() bool { return s.cfg.Mode == ModeAsync || s.cfg.Mode == ModeSync }

// New validates cfg and opens the data directory.
func New(cfg Config) (*Syncer, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("syncer: data directory not set")
	}
	if len(cfg.Secret) < 16 {
		return nil, errors.New("syncer: the shared secret must be at least 16 bytes")
	}
	if cfg.Roles == nil {
		return nil, errors.New("syncer: no role source")
	}
	if err := checkMode(cfg.Mode, cfg.CaptureMount, cfg.DataDir, cfg.SyncAcks); err != nil {
		return nil, fmt.Errorf("syncer: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.ID == "" {
		cfg.ID, _ = os.Hostname()
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("syncer: data directory: %w", err)
	}
	cfg.DataDir = abs
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("syncer: data directory: %w", err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("syncer: data directory: %w", err)
	}
	st, err := replica.OpenState(root)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("syncer: %w", err)
	}
	reg := prometheus.NewRegistry()
	return &Syncer{cfg: cfg, log: cfg.Logger, root: root, state: st, reg: reg, metrics: replica.NewMetrics(reg), failed: make(chan error, 1)}, nil
}

// Registry exposes the syncer's metrics for embedding in another server.
func (s *Syncer) Registry() *prometheus.Registry { return s.reg }

// Position is this instance's replication position: the head a master has
// produced or the last position a clone applied. The election publishes it
// so the most caught-up clone is promoted.
func (s *Syncer) Position() core.Position {
	s.mu.Lock()
	m, c := s.master, s.clone
	s.mu.Unlock()
	switch {
	case m != nil:
		return m.Position()
	case c != nil:
		return c.Status().Position
	}
	return s.state.Get().Position
}

// Drain hands a master's last changes to its clones before a hand-over: it cuts them into ops
// and waits (bounded by ctx) until every live clone acknowledged them; see
// replica.Master.Drain. Anything but a master has nothing to drain.
func (s *Syncer) Drain(ctx context.Context) error {
	s.mu.Lock()
	m := s.master
	s.mu.Unlock()
	if m == nil {
		return nil
	}
	pos, err := m.Drain(ctx)
	if err != nil {
		return fmt.Errorf("syncer: %w", err)
	}
	s.log.Info("drained: every live clone holds the master's head", "term", pos.Term, "seq", pos.Seq)
	return nil
}

// HighWater is, on a master, the highest position of its term a clone has
// acknowledged (zero otherwise): what the election publishes as the group's
// high-water mark.
func (s *Syncer) HighWater() core.Position {
	s.mu.Lock()
	m := s.master
	s.mu.Unlock()
	if m == nil {
		return core.Position{}
	}
	return m.HighWater()
}

// CaughtUp reports whether a clone has applied everything its master
// announced (always true for a serving master).
func (s *Syncer) CaughtUp() bool { return s.Status().CaughtUp }

// Status returns the current status.
func (s *Syncer) Status() Status {
	s.mu.Lock()
	m, c, role, fenced, errs := s.master, s.clone, s.role, s.fenced, s.err
	s.mu.Unlock()
	durable := s.state.Get()
	st := Status{ID: s.cfg.ID, Role: core.RoleIdle, Term: max(role.Term, durable.Term), Healthy: errs == "", Error: errs}
	switch {
	case fenced:
		st.Role = core.RoleFenced
		st.Position = s.state.Get().Position
	case m != nil:
		st.Role = core.RoleMaster
		st.Position = m.Position()
		st.CaughtUp, st.Synced = true, true
		st.Clones = m.Clones()
		st.Unreplicable, st.UnreplicableNames = m.Unreplicable()
		if err := m.ListenErr(); err != nil {
			// Clones cannot connect: not healthy, whatever else holds.
			st.Healthy = false
			st.Error = "replication listener: " + err.Error()
		}
		select {
		case <-m.Ready():
			st.Serving = true
		default:
		}
		if s.capture() {
			s.mu.Lock()
			st.Serving = st.Serving && s.mounted != nil
			s.mu.Unlock()
		}
	case c != nil:
		cs := c.Status()
		st.Role = core.RoleClone
		st.Position = cs.Position
		st.CaughtUp, st.Synced, st.Healthy = cs.CaughtUp, cs.Synced, cs.Healthy && errs == ""
		st.Progress = cs.Progress
		st.MasterSeq = cs.MasterSeq
		st.Stalled, st.MasterSilence = cs.Stalled, cs.Silence
		if cs.Synced && cs.MasterSeq > cs.Position.Seq {
			st.Lag = cs.MasterSeq - cs.Position.Seq
		}
		if cs.Error != "" {
			st.Error = cs.Error
		}
	default:
		// No role yet (the lock is free): what the copy durably holds. The
		// election compares it with the group's high-water mark, so a
		// restarted syncer can be promoted only if its record proves it
		// holds what the last master published.
		st.Position, st.Synced = durable.Position, durable.Synced
	}
	return st
}

// Run follows the role source until ctx ends.
func (s *Syncer) Run(ctx context.Context) error {
	defer s.root.Close()
	if s.cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", s.cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("syncer: metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(s.Status())
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	go s.lagLoop(ctx)
	roles := s.cfg.Roles.Roles(ctx)
	stopRole := func() {}
	defer func() { stopRole() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.failed:
			return fmt.Errorf("syncer: %w", err)
		case r, ok := <-roles:
			if !ok {
				roles = nil
				continue
			}
			stopRole()
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.runRole(rctx, r)
			}()
			stopRole = func() { rcancel(); <-done }
		}
	}
}

// fail reports an error the syncer cannot recover from in its role: a
// master that cannot serve clones. Run returns it, so the process ends and
// (in the elected mode) steps down first, rather than keep the lock and
// replicate nothing.
func (s *Syncer) fail(err error) {
	select {
	case s.failed <- err:
	default:
	}
}

func (s *Syncer) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.err = ""
	} else {
		s.err = err.Error()
	}
}

func (s *Syncer) runRole(ctx context.Context, r core.Assignment) {
	s.mu.Lock()
	s.role, s.fenced, s.err = r, false, ""
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.master, s.clone = nil, nil
		s.mu.Unlock()
	}()
	st := s.state.Get()
	if r.Term < st.Term {
		err := fmt.Errorf("%w: asked to be %s in term %d, but term %d was seen", replica.ErrStaleTerm, r.Role(), r.Term, st.Term)
		s.log.Error("refusing role", "error", err)
		s.mu.Lock()
		s.fenced, s.err = true, err.Error()
		s.mu.Unlock()
		<-ctx.Done()
		return
	}
	if r.Master {
		s.runMaster(ctx, r)
		return
	}
	c := replica.NewClone(replica.CloneConfig{
		Root: s.root, MasterAddr: r.MasterAddr, Secret: s.cfg.Secret, ID: s.cfg.ID,
		Logger: s.log.Named("clone"), Metrics: s.metrics, State: s.state, Owners: os.Geteuid() == 0,
		OnProgress: s.cfg.OnProgress, Dial: s.dialer(), Base: r.Base, Capture: s.capture(),
	})
	s.mu.Lock()
	s.clone = c
	s.mu.Unlock()
	s.log.Info("running as clone", "master", r.MasterAddr, "term", r.Term)
	if err := c.Run(ctx); err != nil {
		s.log.Error("clone stopped", "error", err)
		s.setErr(err)
		<-ctx.Done()
	}
}

// dialer returns nil (plain TCP) or a mutual-TLS dialer.
func (s *Syncer) dialer() func(ctx context.Context, addr string) (net.Conn, error) {
	if s.cfg.TLS == nil {
		return nil
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 3 * time.Second}, Config: s.cfg.TLS}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return d.DialContext(ctx, "tcp", addr)
	}
}

func (s *Syncer) runMaster(ctx context.Context, r core.Assignment) {
	// A master's copy is complete by definition (Synced): once it has
	// recorded a position of its own term (below), a restart may claim it.
	if err := s.state.Update(func(st *replica.State) {
		st.Term, st.Role, st.MasterTerm, st.Synced = r.Term, core.RoleMaster, r.Term, true
	}); err != nil {
		s.log.Error("cannot record role", "error", err)
		s.setErr(err)
		<-ctx.Done()
		return
	}
	listen := func() (net.Listener, error) {
		ln, err := net.Listen("tcp", s.cfg.ListenAddr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", s.cfg.ListenAddr, err)
		}
		if s.cfg.TLS != nil {
			ln = tls.NewListener(ln, s.cfg.TLS)
		}
		return ln, nil
	}
	ln, err := listen()
	if err != nil {
		// A master clones cannot reach replicates nothing: stop, so the
		// lock goes to an instance that can serve.
		s.log.Error("master cannot serve", "error", err)
		s.setErr(err)
		s.fail(err)
		<-ctx.Done()
		return
	}
	m := replica.NewMaster(replica.MasterConfig{
		Dir: s.cfg.DataDir, Root: s.root, Term: r.Term, Listener: ln, Relisten: listen, Secret: s.cfg.Secret,
		Logger: s.log.Named("master"), Metrics: s.metrics, Owners: os.Geteuid() == 0,
		RescanInterval: s.cfg.RescanInterval, Capture: s.capture(), SyncAcks: s.syncAcks(), SyncTimeout: s.cfg.SyncTimeout,
		OnFenced: func(term uint64) {
			_ = s.state.Update(func(st *replica.State) { st.Term = max(st.Term, term) })
			s.mu.Lock()
			s.fenced = true
			s.err = fmt.Sprintf("fenced: term %d seen while master of term %d", term, r.Term)
			s.mu.Unlock()
		},
	})
	s.mu.Lock()
	s.master = m
	s.mu.Unlock()
	s.log.Info("running as master", "listen", ln.Addr().String(), "term", r.Term)
	rctx, stopRecord := context.WithCancel(ctx)
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		s.recordHead(rctx, m)
	}()
	mctx, stopMount := context.WithCancel(ctx)
	mountDone := make(chan struct{})
	if s.capture() {
		go func() {
			defer close(mountDone)
			s.serveMount(mctx, m)
		}()
	} else {
		close(mountDone)
	}
	err = m.Run(ctx)
	stopMount()
	<-mountDone
	stopRecord()
	<-recorded
	pos := m.Position()
	_ = s.state.Update(func(st *replica.State) { st.Position = pos })
	if err != nil && !errors.Is(err, replica.ErrFenced) {
		s.log.Error("master stopped serving; stepping down", "error", err)
		s.setErr(err)
		s.fail(err)
	}
	// A fenced master stays idle until the role source says otherwise.
	s.mu.Lock()
	s.master = nil
	s.mu.Unlock()
	<-ctx.Done()
}

// recordEvery is how often a master records its head in the state file
// while it moves.
const recordEvery = 100 * time.Millisecond

// recordHead records the master's head durably as it moves. The data
// directory is always at least there (ops are cut from it), so a master
// killed with SIGKILL and restarted claims a position it really holds, at
// most recordEvery behind, instead of whatever its last initial sync left in
// the state file (issue 13: a restarted former master claimed 1/0 for data
// of term 2).
func (s *Syncer) recordHead(ctx context.Context, m *replica.Master) {
	every(ctx, recordEvery, func() {
		pos := m.Position()
		if m.Fenced() || s.state.Get().Position == pos {
			return
		}
		if err := s.state.Update(func(st *replica.State) { st.Position = pos }); err != nil {
			s.log.Warn("recording the master's position failed", "error", err)
		}
	})
}

// lagLoop refreshes the per-clone lag-in-seconds gauge, which grows with
// time even when nothing happens.
func (s *Syncer) lagLoop(ctx context.Context) {
	every(ctx, time.Second, func() {
		s.mu.Lock()
		m := s.master
		s.mu.Unlock()
		if m == nil {
			return
		}
		for _, c := range m.Clones() {
			s.metrics.LagSeconds.WithLabelValues(c.ID).Set(c.LagSeconds)
			s.metrics.LagSeq.WithLabelValues(c.ID).Set(float64(c.LagOps))
		}
	})
}

// every calls f every d (the first time after d) until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f()
	}
}
