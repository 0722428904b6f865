package announce

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// DefaultSilence is how long a Gate waits for the next line before it declares the syncer
// silent and closes: three heartbeats plus slack.
const DefaultSilence = time.Second

// GateConfig configures a Gate.
type GateConfig struct {
	// Silence closes the gate when no line arrived for this long (default DefaultSilence).
	// It is what stops the app when the syncer is frozen or hung before its deadline passes.
	Silence time.Duration
	// Lead closes the gate this long before the announced deadline (default 0: the lease's
	// deadline already leaves the driver its stop budget).
	Lead time.Duration
	// Retry is the reconnection period while the socket is absent or refuses (default 200ms).
	Retry time.Duration
	// Logger receives the gate's logs (default: none).
	Logger hclog.Logger
}

// Status is the gate's view at one instant.
type Status struct {
	// State is the last announced state, its Deadline on this process's clock.
	State State
	// Connected tells whether the socket connection is up.
	Connected bool
	// ReceivedAt is when the last line arrived (zero before the first).
	ReceivedAt time.Time
	// Open tells whether the app may run.
	Open bool
	// Reason says why the gate is open or closed, for task events and logs.
	Reason string
	// Until is when an open gate closes unless a new line arrives (zero when closed).
	Until time.Time
}

// Gate is the driver's end: it follows the syncer's announcements, reconnecting whenever the
// socket (re)appears, and answers whether the app may run. It fails closed: before the first
// line, after the connection drops, after Silence without a line, at the deadline, and on any
// role but master.
//
// Contract with the driver: when the gate closes, stop the app at once and have it dead within
// the lease's stop budget (500ms by default, see lease.Timing): the deadline the syncer
// announces already reserves that time before any other instance can be promoted. Before
// starting the app, check MayRun; while it runs, follow Updates (or Status.Until).
type Gate struct {
	path string
	cfg  GateConfig
	log  hclog.Logger

	mu        sync.Mutex
	state     State
	connected bool
	recvAt    time.Time
	lastSeq   uint64
	updates   chan Status
	lastOpen  bool
	lastState State

	version  uint64        // state version of the last line
	running  *bool         // what Report said (nil: this gate does not report)
	failed   bool          // what ReportFailed said
	kick     chan struct{} // Report wakes Run to send
	sent     report        // last report sent on the current connection
	sentConn bool          // whether sent was sent on the current connection
}

// NewGate returns a Gate for the socket at path; Run makes it follow the syncer.
func NewGate(path string, cfg GateConfig) *Gate {
	if cfg.Silence <= 0 {
		cfg.Silence = DefaultSilence
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 200 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Gate{path: path, cfg: cfg, log: log.Named("gate"), state: State{Role: core.RoleUnknown},
		updates: make(chan Status, 1), kick: make(chan struct{}, 1)}
}

// MayRun tells whether the app may run at now: the last line, received less than Silence
// before now over a live connection, said master with a deadline after now + Lead.
func (g *Gate) MayRun(now time.Time) bool { return g.Status(now).Open }

// Status returns the gate's view at now.
func (g *Gate) Status(now time.Time) Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.statusLocked(now)
}

func (g *Gate) statusLocked(now time.Time) Status {
	st := Status{State: g.state, Connected: g.connected, ReceivedAt: g.recvAt}
	switch {
	case !g.connected:
		st.Reason = "no connection to the syncer"
	case g.recvAt.IsZero():
		st.Reason = "no announcement from the syncer yet"
	case now.Sub(g.recvAt) >= g.cfg.Silence:
		st.Reason = fmt.Sprintf("syncer silent for %s", now.Sub(g.recvAt).Round(time.Millisecond))
	case g.state.Role != core.RoleMaster:
		st.Reason = fmt.Sprintf("role is %s at term %d", g.state.Role, g.state.Term)
	case g.state.Deadline.IsZero() || !now.Before(g.state.Deadline.Add(-g.cfg.Lead)):
		st.Reason = fmt.Sprintf("master lease at term %d past its deadline", g.state.Term)
	default:
		st.Open = true
		st.Until = g.state.Deadline.Add(-g.cfg.Lead)
		if silent := g.recvAt.Add(g.cfg.Silence); silent.Before(st.Until) {
			st.Until = silent
		}
		st.Reason = fmt.Sprintf("master at term %d", g.state.Term)
	}
	return st
}

// Report tells the syncer whether the app is running (call it after every start and stop,
// and once at the beginning). The syncer uses it to hand over at once after a step-down
// instead of waiting out its deadline (Announcer.WaitAppStopped). The report is resent on
// every new state and every reconnection while Run runs.
func (g *Gate) Report(running bool) {
	g.mu.Lock()
	g.running, g.failed = &running, false
	g.mu.Unlock()
	g.wake()
}

func (g *Gate) wake() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// ReportFailed tells the syncer that the app ended by itself while master: its container is
// stopped, so the syncer hands the lock over at once and stays a clone until the app task is
// back (Announcer.App().Failed). It returns once the report was written to the syncer, or
// when ctx ends first (the syncer may be gone: then there is no lock to hand over from here).
func (g *Gate) ReportFailed(ctx context.Context) error {
	stopped := false
	g.mu.Lock()
	g.running, g.failed = &stopped, true
	g.mu.Unlock()
	g.wake()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		g.mu.Lock()
		done := g.sentConn && g.sent.AppFailed
		g.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("announce: reporting the app's failure: %w", ctx.Err())
		case <-tick.C:
			g.wake()
		}
	}
}

// sendReport writes the current report on c when it differs from the last one sent there.
// Errors are left to the reader, which sees the connection fail.
func (g *Gate) sendReport(c *net.UnixConn) {
	g.mu.Lock()
	if g.running == nil || c == nil || g.version == 0 {
		g.mu.Unlock()
		return
	}
	r := report{V: Version, Version: g.version, AppRunning: *g.running, AppFailed: g.failed}
	if g.sentConn && g.sent == r {
		g.mu.Unlock()
		return
	}
	g.sent, g.sentConn = r, true
	g.mu.Unlock()
	b, err := json.Marshal(r)
	if err != nil {
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(g.cfg.Silence))
	_, _ = c.Write(append(b, '\n'))
}

// Updates delivers the status whenever the gate opens or closes or the announced state
// changes (heartbeats that change nothing are not delivered); a slow reader only sees the
// latest. It is fed while Run runs.
func (g *Gate) Updates() <-chan Status { return g.updates }

// publish sends the status if it differs from the last one delivered. Called with g.mu held.
func (g *Gate) publishLocked(now time.Time) {
	st := g.statusLocked(now)
	if st.Open == g.lastOpen && sameState(st.State, g.lastState) {
		return
	}
	g.lastOpen, g.lastState = st.Open, st.State
	for {
		select {
		case g.updates <- st:
			return
		default:
			select {
			case <-g.updates:
			default:
			}
		}
	}
}

// sameState compares what matters to a consumer; the deadline moves with every renewal and
// is deliberately left out (the gate's flips carry it).
func sameState(a, b State) bool {
	pa, pb := a.Progress, b.Progress
	return a.Role == b.Role && a.Term == b.Term && a.CaughtUp == b.CaughtUp && a.MasterAddr == b.MasterAddr && a.Lag == b.Lag &&
		a.Message == b.Message && a.Position == b.Position &&
		((pa == nil && pb == nil) || (pa != nil && pb != nil && *pa == *pb))
}

// Run follows the syncer until ctx ends (call it once per Gate): it connects (retrying every Retry while the socket
// is absent), reads lines, and re-evaluates the gate at every line and at the instant it
// would close on its own. It returns ctx's error.
func (g *Gate) Run(ctx context.Context) error {
	lines := make(chan lineOrErr)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	stopConn := func() {}
	defer func() { stopConn() }()
	connected := false
	var conn *net.UnixConn
	retry := time.NewTimer(0)
	defer retry.Stop()

	rearm := func(now time.Time) {
		g.mu.Lock()
		st := g.statusLocked(now)
		g.publishLocked(now)
		g.mu.Unlock()
		timer.Stop()
		if st.Open {
			timer.Reset(max(st.Until.Sub(now), 0))
		}
	}
	for {
		select {
		case <-ctx.Done():
			g.mu.Lock()
			g.connected = false
			g.publishLocked(time.Now())
			g.mu.Unlock()
			return fmt.Errorf("announce: gate: %w", ctx.Err())
		case <-retry.C:
			if connected {
				continue
			}
			c, err := dialUnix(ctx, g.path)
			if err == nil {
				if perr := checkPeer(c); perr != nil {
					_ = c.Close()
					err = perr
				}
			}
			if err != nil {
				g.log.Trace("syncer not reachable yet", "error", err)
				retry.Reset(g.cfg.Retry)
				continue
			}
			g.log.Debug("connected to the syncer", "path", g.path)
			connected = true
			cctx, cancel := context.WithCancel(ctx)
			stopConn = cancel
			conn = c
			g.mu.Lock()
			// versions belong to one announcer: report nothing before this one's first line
			g.connected, g.recvAt, g.lastSeq, g.sentConn, g.version = true, time.Time{}, 0, false, 0
			g.mu.Unlock()
			go g.read(cctx, c, lines)
			rearm(time.Now())
		case <-g.kick:
			g.sendReport(conn)
		case l := <-lines:
			now := time.Now()
			if l.err != nil {
				if ctx.Err() == nil {
					g.log.Debug("connection to the syncer ended", "error", l.err)
				}
				stopConn()
				connected, conn = false, nil
				g.mu.Lock()
				g.connected = false
				g.mu.Unlock()
				rearm(now)
				retry.Reset(g.cfg.Retry)
				continue
			}
			g.mu.Lock()
			if l.seq > g.lastSeq {
				g.state, g.recvAt, g.lastSeq, g.version = l.state, l.at, l.seq, l.version
			}
			g.mu.Unlock()
			rearm(now)
			g.sendReport(conn) // acknowledges a new state version
		case <-timer.C:
			rearm(time.Now())
		}
	}
}

type lineOrErr struct {
	state   State
	seq     uint64
	version uint64
	at      time.Time
	err     error
}

// read parses lines from one connection until it fails, then reports the error and closes it.
func (g *Gate) read(ctx context.Context, c interface {
	Read([]byte) (int, error)
	Close() error
	SetReadDeadline(time.Time) error
}, out chan<- lineOrErr) {
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	defer func() { _ = c.Close() }()
	send := func(l lineOrErr) bool {
		select {
		case out <- l:
			return true
		case <-ctx.Done():
			return false
		}
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), MaxLine)
	for {
		// a connection silent for much longer than Silence is dropped and redialled; the
		// gate itself closed long before, at Silence
		_ = c.SetReadDeadline(time.Now().Add(5 * g.cfg.Silence))
		if !sc.Scan() {
			err := sc.Err()
			if err == nil {
				err = errors.New("syncer closed the connection")
			}
			send(lineOrErr{err: err})
			return
		}
		now := time.Now()
		d, err := decode(sc.Bytes(), now)
		if err != nil {
			send(lineOrErr{err: err})
			return
		}
		if !send(lineOrErr{state: d.state, seq: d.seq, version: d.version, at: now}) {
			return
		}
	}
}

// Follow starts a Gate on the socket at path that follows the syncer until ctx ends; read its
// Updates or ask MayRun.
func Follow(ctx context.Context, path string, cfg GateConfig) *Gate {
	g := NewGate(path, cfg)
	go func() { _ = g.Run(ctx) }()
	return g
}
