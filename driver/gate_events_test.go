package driver

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// eventClock feeds gateEvents synthetic gate views on a fake clock.
type eventClock struct {
	t   *testing.T
	ev  gateEvents
	now time.Time
}

func (c *eventClock) status(s announce.State) announce.Status {
	return announce.Status{State: s, Connected: true, ReceivedAt: c.now, Open: s.Role == core.RoleMaster}
}

// see advances the clock by d, shows the state, and checks the events.
func (c *eventClock) see(d time.Duration, s announce.State, want ...string) {
	c.t.Helper()
	c.now = c.now.Add(d)
	got := c.ev.observe(c.now, c.status(s))
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		c.t.Fatalf("at +%v with %+v: events %q, want %q", c.now.Sub(time.Unix(0, 0)), s, got, want)
	}
}

func following(addr string, term uint64, lag uint64) announce.State {
	return announce.State{Role: core.RoleClone, Term: term, MasterAddr: addr, CaughtUp: true, Lag: lag,
		Message: "following " + addr}
}

func syncing(addr string, term uint64, done, total int64) announce.State {
	return announce.State{Role: core.RoleClone, Term: term, MasterAddr: addr,
		Progress: &core.Progress{BytesDone: done, BytesTotal: total}, Message: "initial sync"}
}

// TestGateEventSequence walks one instance through a clone's life, a
// promotion and a demotion, and checks every task event and every
// announcement that must stay quiet.
func TestGateEventSequence(t *testing.T) {
	c := &eventClock{t: t, now: time.Unix(0, 0)}
	const a, b = "127.0.0.3:2345", "127.0.0.4:2345"

	c.see(0, announce.State{Role: core.RoleCandidate, Message: "waiting for the election"}, "Waiting for the election")
	c.see(time.Second, announce.State{Role: core.RoleCandidate, Message: "waiting for the election"})

	// A new clone: "Following" waits for a quick initial sync, this one is long.
	c.see(time.Second, syncing(a, 3, 0, 1000))
	c.see(time.Second, syncing(a, 3, 20, 1000))
	c.see(time.Second, syncing(a, 3, 50, 1000), "Following "+a+": initial sync")
	c.see(time.Second, syncing(a, 3, 90, 1000))
	c.see(time.Second, syncing(a, 3, 100, 1000), "Initial sync 10%") // a 10% step
	c.see(time.Second, syncing(a, 3, 150, 1000))
	c.see(9*time.Second, syncing(a, 3, 160, 1000), "Initial sync 16%") // 10s since the last
	c.see(time.Second, syncing(a, 3, 165, 1000))
	c.see(time.Second, syncing(a, 3, 630, 1000), "Initial sync 63%")
	c.see(time.Second, syncing(a, 3, 999, 1000), "Initial sync 99%")   // never 100% before it is done
	c.see(10*time.Second, syncing(a, 3, 999, 1000))                    // 10s, but no progress
	c.see(time.Second, following(a, 3, 0), "Following "+a+" at lag 0") // done

	// A busy app's momentary lag is no news; a lasting one is, at most every 30s.
	c.see(time.Second, following(a, 3, 2))
	c.see(time.Second, following(a, 3, 0))
	c.see(time.Second, following(a, 3, 5))
	c.see(time.Second, following(a, 3, 0))
	c.see(30*time.Second, following(a, 3, 1500))
	c.see(time.Second, following(a, 3, 1800))
	c.see(time.Second, following(a, 3, 2000))
	c.see(time.Second, following(a, 3, 2100), "Following "+a+" at lag 2100") // held 3s
	c.see(time.Second, following(a, 3, 150))                                 // another magnitude, but < 30s
	c.see(3*time.Second, following(a, 3, 120))
	c.see(time.Second, following(a, 3, 0), "Following "+a+" at lag 0") // back to 0: at once
	c.see(time.Second, following(a, 3, 0))
	c.see(2*time.Second, following(a, 3, 40))
	c.see(2*time.Second, following(a, 3, 40))
	c.see(26*time.Second, following(a, 3, 40), "Following "+a+" at lag 40") // 30s after the last

	// Promotion: the loop starts the app and tells it; the master's state is quiet.
	c.now = c.now.Add(time.Second)
	if got := c.ev.started(4); got != "Elected master (term 4): app started" {
		t.Fatalf("started: %q", got)
	}
	c.see(0, announce.State{Role: core.RoleMaster, Term: 4, Message: "elected master (term 4)"})
	c.see(time.Second, announce.State{Role: core.RoleMaster, Term: 4, Position: core.Position{Term: 4, Seq: 9}})

	// Stepping down: the stop is told as the demotion.
	down := announce.State{Role: core.RoleClone, Term: 4, Message: "stepping down"}
	c.now = c.now.Add(time.Second)
	if got := c.ev.stopped(c.now, c.status(down)); got != "" {
		t.Fatalf("stopped on a demotion: %q, want nothing (observe tells it)", got)
	}
	c.see(0, down, "Demoted (term 4): app stopped (stepping down)")
	c.see(time.Second, down)
	// Following the new master, caught up: at once, whatever the last lag told.
	c.see(time.Second, following(b, 5, 0), "Following "+b+" at lag 0")

	// Promoted again, then the lease is lost while the syncer lives on.
	c.ev.started(6)
	c.see(time.Second, announce.State{Role: core.RoleMaster, Term: 6})
	lost := announce.State{Role: core.RoleClone, Term: 6, Message: "demoted: lost the lease: session invalidated"}
	c.ev.stopped(c.now, c.status(lost))
	c.see(time.Second, lost, "Demoted (term 6): app stopped (lost the lease: session invalidated)")
	// A quick resync after a fail-over says one thing.
	c.see(time.Second, syncing(a, 7, 0, 10))
	c.see(time.Second, following(a, 7, 0), "Following "+a+" at lag 0")

	// The syncer's warnings on a clone are told, once each; a standing notice too.
	quiet := following(a, 7, 0)
	quiet.Message = announce.MsgNotReceiving + " for 2.8s"
	c.see(time.Second, quiet, "Not receiving from the master for 2.8s")
	c.see(time.Second, quiet)
	quiet.Message = announce.MsgReceivingAgain
	c.see(time.Second, quiet, "Receiving from the master again")
	noted := following(a, 7, 0)
	noted.Notice = "Consul refused the 3s session TTL"
	c.see(time.Second, noted, "Consul refused the 3s session TTL")
	c.see(time.Second, noted)
}

// A master whose deadline passes or whose syncer goes silent: the stop is
// told with the gate's reason, and the demotion when the syncer says so.
func TestGateEventsStopReasons(t *testing.T) {
	c := &eventClock{t: t, now: time.Unix(0, 0)}
	c.ev.started(3)
	c.see(0, announce.State{Role: core.RoleMaster, Term: 3})
	c.now = c.now.Add(time.Second)
	silent := announce.Status{State: announce.State{Role: core.RoleMaster, Term: 3}, Connected: true,
		ReceivedAt: c.now.Add(-2 * time.Second), Reason: "syncer silent for 2s"}
	if got := c.ev.stopped(c.now, silent); got != "App stopped: syncer silent for 2s" {
		t.Fatalf("stopped: %q", got)
	}
	if got := c.ev.observe(c.now, silent); len(got) != 0 {
		t.Fatalf("a silent syncer's stale state told %q", got)
	}
	// The syncer restarts as a candidate: it is no longer master.
	c.see(5*time.Second, announce.State{Role: core.RoleCandidate, Message: "waiting for the election"},
		"Demoted (term 3): app stopped (waiting for the election)")
	c.see(time.Second, announce.State{Role: core.RoleCandidate, Message: "waiting for the election"})
}

// fakeApp is a gated container without Docker.
type fakeApp struct {
	mu      sync.Mutex
	running bool
	starts  int
	events  []string
	exit    chan container.WaitResponse
}

func (f *fakeApp) start(context.Context) (<-chan container.WaitResponse, <-chan error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = true
	f.starts++
	f.exit = make(chan container.WaitResponse, 1)
	return f.exit, make(chan error), nil
}

func (f *fakeApp) stop(context.Context, <-chan container.WaitResponse, <-chan error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = false
	return nil
}

func (f *fakeApp) wait(context.Context) (<-chan container.WaitResponse, <-chan error) {
	return nil, nil
}
func (f *fakeApp) fenced() bool           { return false }
func (f *fakeApp) exited(context.Context) {}
func (f *fakeApp) fail(error)             {}
func (f *fakeApp) removed()               {}
func (f *fakeApp) logError(string, error) {}
func (f *fakeApp) emit(msg string)        { f.mu.Lock(); f.events = append(f.events, msg); f.mu.Unlock() }
func (f *fakeApp) isRunning() bool        { f.mu.Lock(); defer f.mu.Unlock(); return f.running }
func (f *fakeApp) eventList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}
func (f *fakeApp) String() string { return strings.Join(f.eventList(), " | ") }
func (f *fakeApp) waitEvent(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range f.eventList() {
			if e == want {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no event %q; events: %s", want, f)
}

// TestGateLoopEvents runs the driver's gate loop against a fake syncer (a
// real announcer on a real socket) and a fake container: the app follows
// the role, and the task events come in order, from the announcer's
// messages through the gate.
func TestGateLoopEvents(t *testing.T) {
	dir, err := os.MkdirTemp("", "gate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, announce.SocketName)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ann, err := announce.Listen(ctx, sock, announce.AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ann.Close() }()
	const a, b = "127.0.0.3:2345", "127.0.0.4:2345"
	ann.Set(following(a, 2, 0))

	app := &fakeApp{}
	gate := announce.Follow(ctx, sock, announce.GateConfig{})
	done := make(chan struct{})
	go func() { gateLoop(ctx, gate, app, false); close(done) }()
	defer func() { cancel(); <-done }()

	app.waitEvent(t, "Following "+a+" at lag 0")
	ann.Set(announce.State{Role: core.RoleMaster, Term: 3, Deadline: time.Now().Add(time.Minute), Message: "elected master (term 3)"})
	app.waitEvent(t, "Elected master (term 3): app started")
	if !app.isRunning() {
		t.Fatal("the app does not run on the master")
	}
	// the gate reports the app running to the syncer
	waitApp(t, ann, true)

	ann.Set(announce.State{Role: core.RoleClone, Term: 3, Message: "stepping down"})
	app.waitEvent(t, "Demoted (term 3): app stopped (stepping down)")
	if app.isRunning() {
		t.Fatal("the app runs on a clone")
	}
	waitApp(t, ann, false)
	ann.Set(following(b, 4, 0))
	app.waitEvent(t, "Following "+b+" at lag 0")
	// a momentary lag is no news
	ann.Set(following(b, 4, 3))
	time.Sleep(300 * time.Millisecond)
	ann.Set(following(b, 4, 0))
	time.Sleep(300 * time.Millisecond)

	// Promoted, then the syncer dies: the gate's reason.
	ann.Set(announce.State{Role: core.RoleMaster, Term: 5, Deadline: time.Now().Add(time.Minute)})
	app.waitEvent(t, "Elected master (term 5): app started")
	_ = ann.Close()
	app.waitEvent(t, "App stopped: no connection to the syncer")

	want := []string{
		"Following " + a + " at lag 0",
		"Elected master (term 3): app started",
		"Demoted (term 3): app stopped (stepping down)",
		"Following " + b + " at lag 0",
		"Elected master (term 5): app started",
		"App stopped: no connection to the syncer",
	}
	if got := app.eventList(); !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	app.mu.Lock()
	starts := app.starts
	app.mu.Unlock()
	if starts != 2 {
		t.Errorf("%d starts, want 2", starts)
	}
}

func waitApp(t *testing.T, ann *announce.Announcer, running bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if got := ann.App(); got.Reporting == 1 && got.Running == running {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the gate never reported the app running=%v: %+v", running, ann.App())
}
