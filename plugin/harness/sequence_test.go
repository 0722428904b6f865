package harness

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/hclspec"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/hclspecpb"
)

// recordEnv makes the test binary a recording driver plugin: every call is
// appended to the named file as "<pid> <method>", so a test can compare the
// harness's call sequence with the one the recorded Nomad 2.0.5 client made.
const recordEnv = "BEDROCK_HARNESS_RECORD"

func TestMain(m *testing.M) {
	if path := os.Getenv(recordEnv); path != "" && plugin.LaunchedByNomad() {
		logger := plugin.NewLogger("recorder", "error")
		plugin.Serve(&recorder{path: path}, logger)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// recorder is a minimal driver that only records what it is asked.
type recorder struct {
	path string
	mu   sync.Mutex
}

func (r *recorder) note(method string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.OpenFile(r.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	_, _ = fmt.Fprintf(f, "%d %s\n", os.Getpid(), method)
}

func (r *recorder) Info() plugin.Info { return plugin.Info{Name: "probe", Version: "0.0.1"} }
func (r *recorder) ConfigSchema() *hclspecpb.Spec {
	return hclspec.Object(map[string]*hclspec.Spec{"greeting": hclspec.Default(hclspec.Attr("greeting", "string"), hclspec.Literal(`"hello"`))})
}
func (r *recorder) SetConfig(_ context.Context, c *plugin.PluginConfig) error {
	if c.Agent != nil {
		r.note("SetConfig+agent")
	} else {
		r.note("SetConfig")
	}
	return nil
}
func (r *recorder) TaskConfigSchema() *hclspecpb.Spec { return probeSchema }
func (r *recorder) Capabilities() *plugin.Capabilities {
	return &plugin.Capabilities{SendSignals: true, Exec: true, FSIsolation: plugin.FSIsolationImage}
}
func (r *recorder) Init(context.Context) error     { r.note("Init"); return nil }
func (r *recorder) Shutdown(context.Context) error { r.note("Shutdown"); return nil }
func (r *recorder) Fingerprint(ctx context.Context) (<-chan *plugin.Fingerprint, error) {
	ch := make(chan *plugin.Fingerprint, 1)
	ch <- &plugin.Fingerprint{Health: plugin.HealthHealthy}
	return ch, nil
}
func (r *recorder) TaskEvents(ctx context.Context) (<-chan *plugin.TaskEvent, error) {
	return make(chan *plugin.TaskEvent), nil
}
func (r *recorder) StartTask(_ context.Context, c *plugin.TaskConfig) (*plugin.TaskHandle, *plugin.NetworkOverride, error) {
	r.note("StartTask")
	return &plugin.TaskHandle{Version: 1, Config: c, State: plugin.TaskStateRunning, DriverState: []byte("probe-state")}, nil, nil
}
func (r *recorder) RecoverTask(_ context.Context, h *plugin.TaskHandle) error {
	if len(h.Config.DriverConfig) == 0 && string(h.DriverState) == "probe-state" {
		r.note("RecoverTask(no driver config)")
	} else {
		r.note("RecoverTask(driver config)")
	}
	return nil
}
func (r *recorder) WaitTask(context.Context, string) (<-chan *plugin.ExitResult, error) {
	return make(chan *plugin.ExitResult), nil
}
func (r *recorder) StopTask(context.Context, string, time.Duration, string) error {
	r.note("StopTask")
	return nil
}
func (r *recorder) DestroyTask(context.Context, string, bool) error {
	r.note("DestroyTask")
	return nil
}
func (r *recorder) InspectTask(context.Context, string) (*plugin.TaskStatus, error) {
	return &plugin.TaskStatus{}, nil
}
func (r *recorder) TaskStats(context.Context, string, time.Duration) (<-chan *plugin.TaskUsage, error) {
	return make(chan *plugin.TaskUsage), nil
}
func (r *recorder) SignalTask(context.Context, string, string) error { return nil }
func (r *recorder) ExecTask(context.Context, string, []string, time.Duration) (*plugin.ExecResult, error) {
	return &plugin.ExecResult{}, nil
}
func (r *recorder) ExecTaskStreaming(context.Context, *plugin.ExecRequest) (*plugin.ExitResult, error) {
	return &plugin.ExitResult{}, nil
}

// launches splits the record into per-process call lists, in launch order.
func launches(t *testing.T, path string) [][]string {
	t.Helper()
	b, err := os.ReadFile(path) //nolint:gosec // the test's own file
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	byPid := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		pid, method, _ := strings.Cut(line, " ")
		if _, ok := byPid[pid]; !ok {
			order = append(order, pid)
		}
		byPid[pid] = append(byPid[pid], method)
	}
	var out [][]string
	for _, pid := range order {
		out = append(out, byPid[pid])
	}
	return out
}

// TestLaunchSequenceMatchesNomad drives a recording plugin through agent
// start, a task, an agent restart and a plugin crash, and checks that the
// harness made the calls the recorded Nomad 2.0.5 client made, in order
// (the fixture file prefixes a-d), with an empty driver config on recovery.
func TestLaunchSequenceMatchesNomad(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	record := t.TempDir() + "/calls"
	opts := Options{Binary: self, Env: []string{recordEnv + "=" + record}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	c, err := StartAgent(ctx, opts, `greeting = "hi"`)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.PrepareTask(t.TempDir(), TaskSpec{Job: "probe", Group: "g", Task: "app", Config: `image = "local/busybox:1"`})
	if err != nil {
		t.Fatal(err)
	}
	defer task.Logs.Close()
	if err := c.StartTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	if err := c.CrashPlugin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.RecoverTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	if err := c.StopAndDestroy(ctx, task, 7*time.Second, "SIGINT"); err != nil {
		t.Fatal(err)
	}
	c.Stop(ctx)

	got := launches(t, record)
	want := [][]string{
		nil,                        // catalog launch: PluginInfo, ConfigSchema (not recorded)
		{"SetConfig", "SetConfig"}, // a-validate
		{"SetConfig+agent", "Init", "StartTask", // b-run
			"Init", "RecoverTask(no driver config)"}, // c-after-agent-restart (same process)
		{"SetConfig", "SetConfig"}, // c-after-agent-restart-new-launch
		{"SetConfig+agent", "Init", "RecoverTask(no driver config)", "StopTask", "DestroyTask", "Shutdown"}, // d-after-plugin-crash
	}
	want = want[1:] // the catalog launch makes no recorded call
	if len(got) != len(want) {
		t.Fatalf("launches: got %d %v, want %d %v", len(got), got, len(want), want)
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("launch %d: got %v, want %v", i+2, got[i], want[i])
		}
	}
}
