package announce

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// The clone's lag crosses the socket as an additive field of protocol v1:
// an older receiver ignores it, and a line without it decodes as lag 0.
func TestLagOnTheWire(t *testing.T) {
	now := time.Now()
	line, err := encode(State{Role: core.RoleClone, Term: 4, MasterAddr: "127.0.0.3:2345", CaughtUp: true, Lag: 17}, 1, 1, now)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(line), `"lag":17`) {
		t.Fatalf("no lag in %s", line)
	}
	d, err := decode(line, now)
	if err != nil || d.state.Lag != 17 {
		t.Fatalf("decoded %+v, %v", d.state, err)
	}
	// what an older receiver understands is unchanged
	var old map[string]any
	if err := json.Unmarshal(line, &old); err != nil || old["v"] != float64(Version) {
		t.Fatalf("%v %v", old, err)
	}
	d, err = decode([]byte(`{"v":1,"seq":1,"state_version":1,"sent_at":"2024-01-01T00:00:00Z","role":"clone","term":4,"caught_up":true}`), now)
	if err != nil || d.state.Lag != 0 {
		t.Fatalf("a line without lag: %+v, %v", d.state, err)
	}
	// a lag change is a state change for the gate's consumers
	a := State{Role: core.RoleClone, Lag: 1}
	if sameState(a, State{Role: core.RoleClone, Lag: 2}) {
		t.Fatal("a lag change is not delivered")
	}
}

func TestProgressPercent(t *testing.T) {
	for _, c := range []struct {
		p    core.Progress
		want int
	}{
		{core.Progress{BytesTotal: 1000, BytesDone: 630, FilesTotal: 10, FilesDone: 1}, 63},
		{core.Progress{BytesTotal: 1000, BytesDone: 1000}, 99}, // not done yet
		{core.Progress{BytesTotal: 1000, BytesDone: 1000, Done: true}, 100},
		{core.Progress{FilesTotal: 4, FilesDone: 1}, 25}, // empty files
		{core.Progress{}, 100}, // nothing to copy
		{core.Progress{BytesTotal: 10, BytesDone: -1}, 0},
	} {
		if got := c.p.Percent(); got != c.want {
			t.Errorf("%+v: %d%%, want %d%%", c.p, got, c.want)
		}
	}
}

// Update is atomic: concurrent Updates (the elector's refresh and renewals,
// the sync progress) never lose one another's changes, nor a Set's.
func TestUpdateIsAtomic(t *testing.T) {
	a, err := Listen(context.Background(), sockPath(t), AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 2000 {
			a.Update(func(s *State) { s.Term++ })
		}
	}()
	go func() {
		defer wg.Done()
		for range 2000 {
			a.Update(func(s *State) { s.Lag++ })
		}
	}()
	wg.Wait()
	if st := a.State(); st.Term != 2000 || st.Lag != 2000 {
		t.Fatalf("updates were lost: %+v", st)
	}
}

// App and Changed tell a watcher (the service registration) what the gates
// report on the app, at once.
func TestAppReportsAndChanged(t *testing.T) {
	path := sockPath(t)
	a, err := Listen(context.Background(), path, AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	if app := a.App(); app.Reporting != 0 || app.Running {
		t.Fatalf("no gate yet: %+v", app)
	}
	ch := a.Changed()
	a.Set(State{Role: core.RoleMaster, Term: 2, Deadline: time.Now().Add(time.Minute)})
	select {
	case <-ch:
	default:
		t.Fatal("Set did not signal Changed")
	}
	g := startGate(t, path, GateConfig{})
	waitApp := func(want App) {
		t.Helper()
		deadline := time.After(3 * time.Second)
		for {
			ch := a.Changed()
			if a.App() == want {
				return
			}
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("app %+v, want %+v", a.App(), want)
			}
		}
	}
	g.Report(false)
	waitApp(App{Reporting: 1, Running: false})
	g.Report(true)
	waitApp(App{Reporting: 1, Running: true})
}
