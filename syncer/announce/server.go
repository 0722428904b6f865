package announce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
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
	changed chan struct{} // closed and replaced on every Set
	clients int
	closed  bool
}

// Listen creates the socket at path (replacing a stale one) and serves until ctx ends or
// Close. The initial state is RoleUnknown.
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
		state: State{Role: RoleUnknown}, changed: make(chan struct{})}
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
	if s.Role == "" {
		s.Role = RoleUnknown
	}
	if s.Role != RoleMaster {
		s.Deadline = time.Time{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.state = s
	close(a.changed)
	a.changed = make(chan struct{})
}

// Update changes the announced state with fn under the announcer's lock and pushes it.
func (a *Announcer) Update(fn func(*State)) {
	a.mu.Lock()
	s := a.state
	a.mu.Unlock()
	fn(&s)
	a.Set(s)
}

// State returns the announced state.
func (a *Announcer) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
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
		a.wg.Add(1)
		a.mu.Unlock()
		go a.serve(ctx, c)
	}
}

// serve writes the state to one client until it goes away or the announcer closes.
func (a *Announcer) serve(ctx context.Context, c *net.UnixConn) {
	defer a.wg.Done()
	defer func() {
		a.mu.Lock()
		a.clients--
		a.mu.Unlock()
	}()
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Gates send nothing; reading only notices them hanging up.
	go func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(c, MaxLine))
		cancel()
	}()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()

	tick := time.NewTicker(a.cfg.Heartbeat)
	defer tick.Stop()
	var seq uint64
	for {
		a.mu.Lock()
		s, changed := a.state, a.changed
		a.mu.Unlock()
		seq++
		now := time.Now()
		line, err := encode(s, seq, now)
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
