package announce

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// The child mode of the test binary: a stand-in syncer that announces master and renews its
// deadline like a lease would (validity 1.4s, renewed every 470ms), until killed.
const childEnv = "BEDROCK_ANNOUNCE_TEST_CHILD"

const (
	childValidity = 1400 * time.Millisecond
	childRenew    = 470 * time.Millisecond
)

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(runChild(path))
	}
	os.Exit(m.Run())
}

func runChild(path string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	a, err := Listen(ctx, path, AnnouncerConfig{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = a.Close() }()
	for term := uint64(7); ; {
		a.Set(State{Role: core.RoleMaster, Term: term, Deadline: time.Now().Add(childValidity), CaughtUp: true,
			Message: "master"})
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(childRenew):
		}
	}
}

func TestEncodeDecode(t *testing.T) {
	now := time.Now()
	s := State{Role: core.RoleMaster, Term: 3, Position: core.Position{Term: 3, Seq: 9}, CaughtUp: true,
		Deadline: now.Add(1400 * time.Millisecond), MasterAddr: "10.0.0.1:7000",
		Progress: &core.Progress{FilesTotal: 2, FilesDone: 1, BytesTotal: 10, BytesDone: 5}, Message: "hi"}
	line, err := encode(s, 5, 8, now)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(line), "\n") || strings.Count(string(line), "\n") != 1 {
		t.Fatalf("not one line: %q", line)
	}
	// received 100ms later by wall clock: the deadline loses the 100ms spent in transit
	recv := now.Add(100 * time.Millisecond)
	d, err := decode(line[:len(line)-1], recv)
	if err != nil {
		t.Fatal(err)
	}
	got := d.state
	if d.seq != 5 || d.version != 8 || got.Role != core.RoleMaster || got.Term != 3 || got.Position != s.Position || !got.CaughtUp ||
		got.MasterAddr != s.MasterAddr || *got.Progress != *s.Progress || got.Message != "hi" {
		t.Fatalf("round trip: %+v", got)
	}
	if d := got.Deadline.Sub(s.Deadline); d < -time.Microsecond || d > time.Microsecond {
		t.Fatalf("deadline off by %s", d)
	}
	// a wall clock that stepped back (negative transit) never extends the deadline past
	// time-left from receipt
	back := now.Add(-time.Hour)
	d, _ = decode(line[:len(line)-1], back)
	got = d.state
	if d := got.Deadline.Sub(back); d != 1400*time.Millisecond {
		t.Fatalf("deadline after a backward step: %s left, want 1.4s", d)
	}
	// past deadline stays "master, expired", not "no deadline"
	line, _ = encode(State{Role: core.RoleMaster, Deadline: now.Add(-time.Second)}, 1, 1, now)
	d, _ = decode(line, now)
	got = d.state
	if got.Deadline.IsZero() || !got.Deadline.Equal(now) {
		t.Fatalf("expired deadline decoded as %v", got.Deadline)
	}
	// no deadline for clones
	line, _ = encode(State{Role: core.RoleClone}, 1, 1, now)
	if d, _ = decode(line, now); !d.state.Deadline.IsZero() {
		t.Fatal("clone got a deadline")
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, line := range map[string]string{
		"garbage":  `{`,
		"version":  `{"v":2,"role":"master"}`,
		"role":     `{"v":1,"role":"king"}`,
		"negative": `{"v":1,"role":"master","deadline_in_ns":-5}`,
	} {
		if _, err := decode([]byte(line), time.Now()); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func sockPath(t *testing.T) string {
	// short temp dirs: the default TMPDIR-based names are fine, but keep them small
	dir, err := os.MkdirTemp("", "ann")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, SocketName)
}

func startGate(t *testing.T, path string, cfg GateConfig) *Gate {
	g := NewGate(path, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = g.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return g
}

// waitGate waits until the gate's openness is want, returning when that happened.
func waitGate(t *testing.T, g *Gate, want bool, within time.Duration) time.Time {
	t.Helper()
	end := time.Now().Add(within)
	for {
		now := time.Now()
		if g.MayRun(now) == want {
			return now
		}
		if now.After(end) {
			t.Fatalf("gate not %v within %s: %+v", want, within, g.Status(now))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestGateFollowsAnnouncer(t *testing.T) {
	path := sockPath(t)
	g := startGate(t, path, GateConfig{Retry: 20 * time.Millisecond})
	if g.MayRun(time.Now()) {
		t.Fatal("open before any syncer")
	}
	// the socket appears later: the gate connects by itself
	time.Sleep(100 * time.Millisecond)
	a, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	testutil.WaitFor(t, time.Second, func() bool { s := g.Status(time.Now()); return s.Connected && !s.ReceivedAt.IsZero() })
	if st := g.Status(time.Now()); st.Open || st.State.Role != core.RoleUnknown {
		t.Fatalf("initial status %+v", st)
	}

	deadline := time.Now().Add(600 * time.Millisecond)
	a.Set(State{Role: core.RoleMaster, Term: 4, Deadline: deadline})
	waitGate(t, g, true, time.Second)
	if st := g.Status(time.Now()); st.State.Term != 4 || st.Until.After(deadline.Add(5*time.Millisecond)) {
		t.Fatalf("open status %+v", st)
	}
	// the deadline passes with heartbeats still flowing: the gate closes at the deadline
	closed := waitGate(t, g, false, time.Second)
	if late := closed.Sub(deadline); late < -5*time.Millisecond || late > 100*time.Millisecond {
		t.Fatalf("gate closed %s after the deadline", late)
	}
	st := g.Status(time.Now())
	if !strings.Contains(st.Reason, "deadline") {
		t.Fatalf("reason %q", st.Reason)
	}

	// renewal reopens; demotion closes at once
	a.Set(State{Role: core.RoleMaster, Term: 4, Deadline: time.Now().Add(10 * time.Second)})
	waitGate(t, g, true, time.Second)
	start := time.Now()
	a.Set(State{Role: core.RoleClone, Term: 5, MasterAddr: "10.0.0.2:7000", Deadline: time.Now().Add(time.Hour)})
	waitGate(t, g, false, time.Second)
	t.Logf("gate closed %s after demotion", time.Since(start).Round(time.Microsecond))
	if st := g.Status(time.Now()); st.State.Role != core.RoleClone || st.State.MasterAddr != "10.0.0.2:7000" || !st.State.Deadline.IsZero() {
		t.Fatalf("clone status %+v", st)
	}

	// the syncer goes away: closed at once, reopens after it comes back
	a.Set(State{Role: core.RoleMaster, Term: 6, Deadline: time.Now().Add(time.Hour)})
	waitGate(t, g, true, time.Second)
	start = time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	waitGate(t, g, false, time.Second)
	t.Logf("gate closed %s after the announcer closed", time.Since(start).Round(time.Microsecond))
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	a2, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a2.Close() }()
	a2.Set(State{Role: core.RoleMaster, Term: 6, Deadline: time.Now().Add(time.Hour)})
	waitGate(t, g, true, 2*time.Second)
}

func TestUpdatesChannel(t *testing.T) {
	path := sockPath(t)
	a, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	g := startGate(t, path, GateConfig{})
	next := func(pred func(Status) bool) Status {
		t.Helper()
		timeout := time.After(3 * time.Second)
		for {
			select {
			case st := <-g.Updates():
				if pred(st) {
					return st
				}
			case <-timeout:
				t.Fatal("no such update")
			}
		}
	}
	a.Update(func(s *State) {
		s.Role, s.Term, s.Deadline = core.RoleMaster, 9, time.Now().Add(400*time.Millisecond)
		s.Message = "promoted to master at term 9"
	})
	st := next(func(s Status) bool { return s.Open })
	if st.State.Message != "promoted to master at term 9" {
		t.Fatalf("%+v", st)
	}
	// the deadline passing is delivered without any new line changing the state
	st = next(func(s Status) bool { return !s.Open })
	if !strings.Contains(st.Reason, "deadline") {
		t.Fatalf("closing reason %q", st.Reason)
	}
	a.Update(func(s *State) { s.Progress = &core.Progress{FilesTotal: 3, FilesDone: 1} })
	st = next(func(s Status) bool { return s.State.Progress != nil })
	if st.State.Progress.FilesDone != 1 {
		t.Fatalf("%+v", st)
	}
}

func TestManyClientsAndLimits(t *testing.T) {
	path := sockPath(t)
	a, err := Listen(context.Background(), path, AnnouncerConfig{MaxClients: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	a.Set(State{Role: core.RoleMaster, Term: 2, Deadline: time.Now().Add(time.Hour)})
	var gates []*Gate
	for range 3 {
		gates = append(gates, startGate(t, path, GateConfig{}))
	}
	for _, g := range gates {
		waitGate(t, g, true, 2*time.Second)
	}
	// a fourth is refused (connection closed at once)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(make([]byte, 100)); err == nil {
		t.Fatalf("fourth client got %d bytes", n)
	}
	_ = c.Close()
}

func TestHeartbeatsArrive(t *testing.T) {
	path := sockPath(t)
	a, err := Listen(context.Background(), path, AnnouncerConfig{Heartbeat: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	a.Set(State{Role: core.RoleMaster, Term: 1, Deadline: time.Now().Add(time.Second)})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	sc := bufio.NewScanner(c)
	var prevLeft int64
	var seqs []uint64
	start := time.Now()
	for i := 0; i < 6 && sc.Scan(); i++ {
		var m message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, m.Seq)
		if i > 0 && m.DeadlineIn >= prevLeft {
			t.Fatalf("time left did not shrink: %d then %d", prevLeft, m.DeadlineIn)
		}
		prevLeft = m.DeadlineIn
	}
	if el := time.Since(start); el < 200*time.Millisecond || el > time.Second {
		t.Fatalf("6 lines in %s at a 50ms heartbeat", el)
	}
	for i := range seqs {
		if seqs[i] != uint64(i+1) {
			t.Fatalf("sequence %v", seqs)
		}
	}
}

func TestStaleSocketAndLongPath(t *testing.T) {
	path := sockPath(t)
	// a stale socket from a dead syncer is replaced
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = l.Close()
	a, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	_ = a.Close()
	// a regular file is never replaced
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(context.Background(), path, AnnouncerConfig{}); err == nil {
		t.Fatal("replaced a regular file")
	}

	// a path longer than sun_path works on both ends
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60), "alloc", "tmp")
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(deep, SocketName)
	if len(long) <= maxSunPath {
		t.Fatalf("path only %d bytes", len(long))
	}
	a, err = Listen(context.Background(), long, AnnouncerConfig{})
	if err != nil {
		t.Fatalf("long path: %v", err)
	}
	defer func() { _ = a.Close() }()
	if st, err := os.Stat(long); err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket at the long path: %v %v", st, err)
	}
	a.Set(State{Role: core.RoleMaster, Term: 1, Deadline: time.Now().Add(time.Hour)})
	g := startGate(t, long, GateConfig{})
	waitGate(t, g, true, 2*time.Second)
	if got := SocketPath("/a"); got != filepath.Join("/a", "alloc", "tmp", SocketName) {
		t.Fatalf("SocketPath = %s", got)
	}
}

// A peer that sends an oversized or malformed line is disconnected and the gate stays closed.
func TestGateRejectsBadPeers(t *testing.T) {
	for name, payload := range map[string]string{
		"oversized": `{"v":1,"role":"master","deadline_in_ns":999999999999,"message":"` + strings.Repeat("x", MaxLine) + "\"}\n",
		"garbage":   "not json\n",
		"version":   `{"v":9,"role":"master","deadline_in_ns":999999999999}` + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := sockPath(t)
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = l.Close() }()
			accepted := make(chan struct{}, 10)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					accepted <- struct{}{}
					go func() {
						_, _ = c.Write([]byte(payload))
						time.Sleep(2 * time.Second)
						_ = c.Close()
					}()
				}
			}()
			g := startGate(t, path, GateConfig{Retry: 50 * time.Millisecond})
			<-accepted
			select {
			case <-accepted: // dropped and redialled
			case <-time.After(2 * time.Second):
				t.Fatal("bad peer not dropped")
			}
			if g.MayRun(time.Now()) {
				t.Fatal("gate opened on a bad line")
			}
		})
	}
}

func TestCheckPeerAcceptsOwnUser(t *testing.T) {
	path := sockPath(t)
	a, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	c, err := dialUnix(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := checkPeer(c); err != nil {
		t.Fatal(err)
	}
}

// The syncer is a real process that announces master and renews its deadline; frozen with
// SIGSTOP it says nothing more, and the gate must close on silence, before the last announced
// deadline passes. SIGCONT reopens it; killing the process closes it at once.
func TestGateClosesWhenSyncerFrozen(t *testing.T) {
	path := sockPath(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-exited
	})

	g := startGate(t, path, GateConfig{Retry: 20 * time.Millisecond})
	waitGate(t, g, true, 5*time.Second)
	time.Sleep(600 * time.Millisecond) // a renewal or two

	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// what the gate knew when the syncer froze (a line may still have been in flight: take
	// the status a moment later, still long before any silence)
	time.Sleep(20 * time.Millisecond)
	st := g.Status(time.Now())
	if !st.Open {
		t.Fatalf("gate closed right after the freeze: %+v", st)
	}
	lastDeadline := st.State.Deadline
	closed := waitGate(t, g, false, 3*time.Second)
	after := closed.Sub(stopped)
	t.Logf("syncer frozen: gate closed after %s (last line %s before the freeze; the deadline was %s ahead of the freeze)",
		after.Round(time.Millisecond), stopped.Sub(st.ReceivedAt).Round(time.Millisecond),
		lastDeadline.Sub(stopped).Round(time.Millisecond))
	// closed at whichever comes first, silence or the deadline; never after the deadline
	limit := st.ReceivedAt.Add(DefaultSilence)
	if lastDeadline.Before(limit) {
		limit = lastDeadline
	}
	// (MayRun computes the instant itself; the slack is only this test's polling)
	if late := closed.Sub(limit); late > 100*time.Millisecond {
		t.Fatalf("gate closed %s after min(silence, deadline)", late)
	}
	if late := closed.Sub(lastDeadline); late > 100*time.Millisecond {
		t.Fatalf("gate closed %s after the deadline", late)
	}
	if after > DefaultSilence+100*time.Millisecond {
		t.Fatalf("gate closed %s after the freeze, want ≤ silence %s", after, DefaultSilence)
	}
	if st := g.Status(time.Now()); !strings.Contains(st.Reason, "silent") && !strings.Contains(st.Reason, "deadline") {
		t.Fatalf("reason %q", st.Reason)
	}
	// stays closed while frozen
	time.Sleep(700 * time.Millisecond)
	if g.MayRun(time.Now()) {
		t.Fatal("gate reopened while the syncer is frozen")
	}

	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitGate(t, g, true, 3*time.Second)

	start := time.Now()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitGate(t, g, false, time.Second)
	t.Logf("syncer killed: gate closed after %s", time.Since(start).Round(time.Millisecond))
	if st := g.Status(time.Now()); st.Connected {
		t.Fatalf("still connected to a dead syncer: %+v", st)
	}
}

// A syncer stepping down learns from the driver's report that the app has stopped, so it can
// hand over at once instead of waiting out its deadline.
func TestWaitAppStopped(t *testing.T) {
	path := sockPath(t)
	a, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitAppStopped(ctx); !errors.Is(err, ErrNoGate) {
		t.Fatalf("no gate: %v", err)
	}
	// a gate that does not report is an observer: still nobody to confirm
	observer := startGate(t, path, GateConfig{})
	testutil.WaitFor(t, 2*time.Second, func() bool { return !observer.Status(time.Now()).ReceivedAt.IsZero() })
	if err := a.WaitAppStopped(ctx); !errors.Is(err, ErrNoGate) {
		t.Fatalf("observer only: %v", err)
	}

	gctx, gcancel := context.WithCancel(context.Background())
	defer gcancel()
	g := Follow(gctx, path, GateConfig{})
	a.Set(State{Role: core.RoleMaster, Term: 3, Deadline: time.Now().Add(time.Hour)})
	waitGate(t, g, true, 2*time.Second)
	g.Report(true)
	testutil.WaitFor(t, 2*time.Second, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.reports) == 1
	})

	// step down: the wait ends when the driver reports the app stopped
	a.Set(State{Role: core.RoleClone, Term: 4})
	short, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	if err := a.WaitAppStopped(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("app still running: %v", err)
	}
	scancel()
	waitGate(t, g, false, time.Second)
	stopAt := time.Now()
	go func() {
		time.Sleep(50 * time.Millisecond) // the driver stopping the container
		g.Report(false)
	}()
	if err := a.WaitAppStopped(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("step-down confirmed %s after the gate closed (50ms of it the simulated stop)", time.Since(stopAt).Round(time.Millisecond))

	// a report made before the current state counts once the gate has seen the new state
	a.Set(State{Role: core.RoleCandidate, Term: 4})
	if err := a.WaitAppStopped(ctx); err != nil {
		t.Fatalf("not running since before the change: %v", err)
	}

	// the reporting gate goes away during a wait: nobody can confirm any more
	a.Set(State{Role: core.RoleMaster, Term: 5, Deadline: time.Now().Add(time.Hour)})
	g.Report(true)
	testutil.WaitFor(t, 2*time.Second, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, r := range a.reports {
			return r.AppRunning && r.Version == a.version
		}
		return false
	})
	a.Set(State{Role: core.RoleClone, Term: 6})
	go func() { time.Sleep(100 * time.Millisecond); gcancel() }()
	if err := a.WaitAppStopped(ctx); !errors.Is(err, ErrNoGate) {
		t.Fatalf("gate gone: %v", err)
	}
}

func TestAnnouncerDropsBadReports(t *testing.T) {
	path := sockPath(t)
	a, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	for name, line := range map[string]string{
		"garbage": "nope\n",
		"future":  `{"v":1,"state_version":999,"app_running":false}` + "\n",
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = io.Copy(io.Discard, c) // the announcer hangs up
		_ = c.Close()
		if err != nil {
			t.Fatalf("%s: connection not dropped: %v", name, err)
		}
	}
	if err := a.WaitAppStopped(context.Background()); !errors.Is(err, ErrNoGate) {
		t.Fatalf("a bad report counted: %v", err)
	}
}
