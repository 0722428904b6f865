package announce

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// Heartbeat is the default period at which the Announcer resends its state; a Gate declares
// the syncer silent after DefaultSilence without a line, i.e. after three missed heartbeats.
const Heartbeat = 300 * time.Millisecond

// AnnouncerConfig configures an Announcer.
type AnnouncerConfig struct {
	// Heartbeat is the resend period (default Heartbeat).
	Heartbeat time.Duration
	// MaxClients bounds simultaneous connections (default 16); more are refused.
	MaxClients int
	// WriteTimeout drops a client that does not read for this long (default 1s), so that
	// a stuck driver cannot block the syncer.
	WriteTimeout time.Duration
	// Logger receives the announcer's logs (default: none).
	Logger hclog.Logger
}

// Announcer is the syncer's end: it serves the latest State to every connected Gate, at once
// on connect, on every change, and every heartbeat.
type Announcer struct {
	path string
	cfg  AnnouncerConfig
	log  hclog.Logger
	l    *net.UnixListener

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	state   State
	version uint64        // +1 per Set
	changed chan struct{} // closed and replaced on every Set
	clients int
	closed  bool
	nextID  uint64
	reports map[uint64]report // per connection: the gate's last report (reporting gates only)
	repCh   chan struct{}     // closed and replaced on every report change
	notify  chan struct{}     // closed and replaced on every Set and report change
	notice  string            // SetNotice's, carried by every state
}

// ErrNoGate means no connected gate reports on the app: nobody can confirm it stopped, so the
// caller must wait out its deadline (plus the stop budget) instead.
var ErrNoGate = errors.New("no gate reports on the app")

// Listen creates the socket at path (replacing a stale one) and serves until ctx ends or
// Close. The initial state is core.RoleUnknown.
func Listen(ctx context.Context, path string, cfg AnnouncerConfig) (*Announcer, error) {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = Heartbeat
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 16
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	l, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	a := &Announcer{path: path, cfg: cfg, log: log.Named("announce"), l: l, ctx: actx, cancel: cancel,
		state: State{Role: core.RoleUnknown}, version: 1, changed: make(chan struct{}),
		reports: map[uint64]report{}, repCh: make(chan struct{}), notify: make(chan struct{})}
	a.wg.Add(2)
	go a.accept(actx)
	go func() {
		defer a.wg.Done()
		<-actx.Done()
		_ = a.l.Close()
	}()
	return a, nil
}

// Path is the socket's path.
func (a *Announcer) Path() string { return a.path }

// Set replaces the announced state and pushes it to every client at once. Call it on every
// change, including every lease renewal that moved the deadline: heartbeats resend the state
// with a fresh time-left but never move the deadline themselves.
func (a *Announcer) Set(s State) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setLocked(s)
}

// SetNotice sets the standing warning every announced state carries from now on (State.Notice;
// the driver tells it once as a task event).
func (a *Announcer) SetNotice(notice string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.notice = notice
	a.setLocked(a.state)
}

func (a *Announcer) setLocked(s State) {
	s.Notice = a.notice
	if s.Role == "" {
		s.Role = core.RoleUnknown
	}
	if s.Role != core.RoleMaster {
		s.Deadline = time.Time{}
	}
	a.state = s
	a.version++
	close(a.changed)
	a.changed = make(chan struct{})
	a.notifyLocked()
}

// Update changes the announced state with fn and pushes it, atomically: no Set can come
// between the state fn sees and the one it leaves. fn runs under the announcer's lock and
// must not call the Announcer.
func (a *Announcer) Update(fn func(*State)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.state
	fn(&s)
	a.setLocked(s)
}

// State returns the announced state.
func (a *Announcer) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

// App is what the connected gates report on the app.
type App struct {
	// Reporting is how many connected gates report on the app (0: nobody can tell).
	Reporting int
	// Running tells whether any of them reported the app running in its last report.
	Running bool
	// Failed tells whether any of them reported that the app ended by itself while master
	// (Gate.ReportFailed): the app is stopped, and this instance should hand over.
	Failed bool
}

// App returns what the connected gates last reported on the app.
func (a *Announcer) App() App {
	a.mu.Lock()
	defer a.mu.Unlock()
	app := App{Reporting: len(a.reports)}
	for _, r := range a.reports {
		app.Running = app.Running || r.AppRunning
		app.Failed = app.Failed || r.AppFailed
	}
	return app
}

// Changed returns a channel closed at the next change of the announced state or of a gate's
// report (see State and App): a watcher reads both, then waits on a fresh Changed.
func (a *Announcer) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.notify
}

// notifyLocked wakes Changed's waiters. Called with a.mu held.
func (a *Announcer) notifyLocked() {
	close(a.notify)
	a.notify = make(chan struct{})
}

// WaitAppStopped waits until every gate that reports on the app has reported it not running
// after seeing the current state, e.g. after Set announced a step-down: then the syncer can
// ship its last changes and release the lock without waiting out its deadline. It returns
// ErrNoGate at once when no connected gate reports (a driver that is not connected cannot
// confirm anything: wait out the deadline instead), and ctx's error when it ends first.
func (a *Announcer) WaitAppStopped(ctx context.Context) error {
	a.mu.Lock()
	v0 := a.version
	a.mu.Unlock()
	for {
		a.mu.Lock()
		reporting, stopped := len(a.reports), 0
		for _, r := range a.reports {
			if r.Version >= v0 && !r.AppRunning {
				stopped++
			}
		}
		ch := a.repCh
		a.mu.Unlock()
		if reporting == 0 {
			return ErrNoGate
		}
		if stopped == reporting {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("announce: waiting for the app to stop: %w", ctx.Err())
		case <-ch:
		}
	}
}

// setReport records (ok) or forgets (!ok) connection id's report. Called with a.mu held.
func (a *Announcer) setReportLocked(id uint64, r report, ok bool) {
	if ok {
		a.reports[id] = r
	} else {
		if _, had := a.reports[id]; !had {
			return
		}
		delete(a.reports, id)
	}
	close(a.repCh)
	a.repCh = make(chan struct{})
	a.notifyLocked()
}

// Close stops serving, disconnects every client and removes the socket. Gates see the
// connection end and close at once.
func (a *Announcer) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
	if err := os.Remove(a.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("announce: remove socket: %w", err)
	}
	return nil
}

func (a *Announcer) accept(ctx context.Context) {
	defer a.wg.Done()
	for {
		c, err := a.l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("accept failed", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if err := checkPeer(c); err != nil {
			a.log.Warn("refusing connection", "error", err)
			_ = c.Close()
			continue
		}
		a.mu.Lock()
		if a.clients >= a.cfg.MaxClients {
			a.mu.Unlock()
			a.log.Warn("refusing connection: too many clients", "max", a.cfg.MaxClients)
			_ = c.Close()
			continue
		}
		a.clients++
		a.nextID++
		id := a.nextID
		a.wg.Add(1)
		a.mu.Unlock()
		go a.serve(ctx, c, id)
	}
}

// serve writes the state to one client until it goes away or the announcer closes.
func (a *Announcer) serve(ctx context.Context, c *net.UnixConn, id uint64) {
	defer a.wg.Done()
	defer func() {
		a.mu.Lock()
		a.clients--
		a.setReportLocked(id, report{}, false)
		a.mu.Unlock()
	}()
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Gates send reports (or nothing); reading also notices them hanging up.
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer cancel()
		a.readReports(c, id)
	}()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()

	tick := time.NewTicker(a.cfg.Heartbeat)
	defer tick.Stop()
	var seq uint64
	for {
		a.mu.Lock()
		s, version, changed := a.state, a.version, a.changed
		a.mu.Unlock()
		seq++
		now := time.Now()
		line, err := encode(s, seq, version, now)
		if err != nil {
			a.log.Error("cannot encode the state", "error", err)
			return
		}
		if err := c.SetWriteDeadline(now.Add(a.cfg.WriteTimeout)); err != nil {
			return
		}
		if _, err := c.Write(line); err != nil {
			if ctx.Err() == nil {
				a.log.Debug("client gone", "error", err)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// readReports reads a gate's report lines until the connection ends or misbehaves.
func (a *Announcer) readReports(c *net.UnixConn, id uint64) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 1024), MaxLine)
	for sc.Scan() {
		var r report
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.V != Version {
			a.log.Warn("dropping a gate that sent a malformed report", "error", err, "version", r.V)
			return
		}
		a.mu.Lock()
		if r.Version > a.version {
			a.mu.Unlock()
			a.log.Warn("dropping a gate that reported on a future state", "version", r.Version)
			return
		}
		a.setReportLocked(id, r, true)
		a.mu.Unlock()
	}
}
