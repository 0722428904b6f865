// Package conformance drives the built plugin binary through plugin/harness
// exactly as a Nomad client would, and checks the facts of Nomad's plugin
// protocol that a real client relies on.
package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/basepb"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// endpointAttr is the plugin config attribute naming the Docker endpoint.
const endpointAttr = "docker_endpoint"

var pluginBin string

func TestMain(m *testing.M) {
	bin, err := harness.BuildPlugin()
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the plugin:", err)
		os.Exit(1)
	}
	pluginBin = bin
	os.Exit(m.Run())
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startAgent(t *testing.T, pluginHCL string) *harness.Client {
	t.Helper()
	return testutil.StartAgent(t, pluginBin, pluginHCL, 60*time.Second)
}

func withoutCookie() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, plugin.MagicCookieKey+"=") {
			env = append(env, e)
		}
	}
	return env
}

func TestRunByHand(t *testing.T) {
	cmd := exec.Command(pluginBin)
	cmd.Env = withoutCookie()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("run by hand: want exit code 1, got %v", err)
	}
	out := stdout.String() + stderr.String()
	for _, want := range []string{"Nomad plugin", "plugin_dir", `plugin "nomad-driver-bedrock"`, "validate", "init", "version"} {
		if !strings.Contains(out, want) {
			t.Errorf("by-hand output lacks %q:\n%s", want, out)
		}
	}

	for _, flag := range []string{"-version", "version"} {
		cmd = exec.Command(pluginBin, flag)
		cmd.Env = withoutCookie()
		b, err := cmd.Output()
		if err != nil || !strings.HasPrefix(string(b), "nomad-driver-bedrock v") {
			t.Errorf("%s: %v %q", flag, err, b)
		}
	}
}

// A wrong cookie means "not started by Nomad": the binary behaves as the
// CLI, and a strict client must refuse its output as a handshake.
func TestWrongCookieIsNotAPlugin(t *testing.T) {
	_, err := harness.Launch(ctxFor(t, 20*time.Second), harness.Options{
		Binary: pluginBin,
		Env:    []string{plugin.MagicCookieKey + "=nope"},
	})
	if err == nil {
		t.Fatal("a launch with the wrong cookie must not produce a handshake")
	}
}

func TestHandshakeAndPluginInfo(t *testing.T) {
	c := startAgent(t, "")
	if c.Info.GetName() != "bedrock" {
		t.Errorf("name %q", c.Info.GetName())
	}
	if err := harness.CheckPluginInfo(c.Info); err != nil {
		t.Error(err)
	}
	caps := c.Capabilities
	if !caps.GetSendSignals() || !caps.GetExec() || caps.GetFsIsolation() != driverpb.Capabilities_IMAGE {
		t.Errorf("capabilities %v", caps)
	}
}

// The task schema must accept the jobspec shapes of DESIGN.md, with map
// options written as Nomad users write them.
func TestTaskSchemaAcceptsDesignShapes(t *testing.T) {
	c := startAgent(t, "")
	for _, body := range []string{
		`image = "bedrock-demo:latest"
		 ports = ["http"]
		 data  = "/data"
		 args  = ["-x"]
		 labels = { team = "bedrock" }`,
		`syncer {
		   port = "sync"
		 }`,
	} {
		if _, err := harness.EncodeHCL(c.TaskSpec, "task config", body, nil); err != nil {
			t.Errorf("schema refuses %q: %v", body, err)
		}
	}
	if _, err := harness.EncodeHCL(c.TaskSpec, "task config", `imgae = "x"`, nil); err == nil {
		t.Error("an unknown option must be refused")
	}
}

func TestSetConfig(t *testing.T) {
	// Defaults only, and explicit settings.
	startAgent(t, "")
	c := startAgent(t, endpointAttr+` = "unix:///var/run/docker.sock"`)
	ctx := ctxFor(t, 20*time.Second)

	// Without nomad_config (a validation launch) on the live instance too.
	if _, err := c.Plugin.Base.SetConfig(ctx, &basepb.SetConfigRequest{PluginApiVersion: plugin.APIVersion}); err != nil {
		t.Fatalf("SetConfig without config: %v", err)
	}

	bad := []struct {
		cfg  map[string]any
		want string
	}{
		{map[string]any{"no_such_option": true}, "no_such_option"},
		{map[string]any{endpointAttr: 42}, endpointAttr},
	}
	for _, b := range bad {
		raw, err := msgpack.Marshal(b.cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Plugin.Base.SetConfig(ctx, &basepb.SetConfigRequest{MsgpackConfig: raw, PluginApiVersion: plugin.APIVersion})
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("SetConfig(%v): want an error naming %q, got %v", b.cfg, b.want, err)
		}
		if code := status.Code(err); code == codes.Unavailable || code == codes.Canceled {
			t.Errorf("SetConfig error must not look like a crash: %v", code)
		}
	}
	// A refused config changes nothing: the plugin is still healthy.
	fp := firstFingerprint(t, c)
	if fp.GetHealth() != driverpb.FingerprintResponse_HEALTHY {
		t.Errorf("after a refused config: %v %q", fp.GetHealth(), fp.GetHealthDescription())
	}

	// A bad value through the agent's HCL is refused at agent start.
	_, err := harness.StartAgent(ctx, harness.Options{Binary: pluginBin}, endpointAttr+` = "ftp://nowhere"`)
	if err == nil || !strings.Contains(err.Error(), endpointAttr) {
		t.Errorf("bad endpoint: want an error naming %s, got %v", endpointAttr, err)
	}
}

func firstFingerprint(t *testing.T, c *harness.Client) *driverpb.FingerprintResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Fingerprint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// recvAll forwards stream values to a channel until the stream ends.
func recvAll[T any](recv func() (T, error)) (<-chan T, <-chan error) {
	out := make(chan T, 16)
	errc := make(chan error, 1)
	go func() {
		defer close(out)
		for {
			v, err := recv()
			if err != nil {
				errc <- err
				return
			}
			out <- v
		}
	}()
	return out, errc
}

func TestFingerprintStream(t *testing.T) {
	c := startAgent(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	s, err := c.Fingerprint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vals, errc := recvAll(s.Recv)
	select {
	case fp := <-vals:
		if d := time.Since(start); d > time.Second {
			t.Errorf("first fingerprint after %v, want < 1s", d)
		}
		if fp.GetHealth() != driverpb.FingerprintResponse_HEALTHY {
			t.Fatalf("health %v: %s", fp.GetHealth(), fp.GetHealthDescription())
		}
		for _, a := range []string{"driver.bedrock.version", "driver.bedrock.docker.version"} {
			if fp.GetAttributes()[a].GetStringVal() == "" {
				t.Errorf("attribute %s missing: %v", a, fp.GetAttributes())
			}
		}
	case err := <-errc:
		t.Fatalf("stream ended before the first fingerprint: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no fingerprint")
	}
	// The stream stays open: an ended stream makes the client busy-loop.
	select {
	case err := <-errc:
		t.Fatalf("fingerprint stream ended on its own: %v", err)
	case <-time.After(3 * time.Second):
	}
	cancel()
	select {
	case <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end after cancel")
	}

	// TaskEvents, likewise, stays open until cancelled.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	ev, err := c.TaskEvents(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	_, everr := recvAll(ev.Recv)
	select {
	case err := <-everr:
		t.Fatalf("task events stream ended on its own: %v", err)
	case <-time.After(2 * time.Second):
	}
}

// waitHealth reads fingerprints until one has the wanted health.
func waitHealth(t *testing.T, vals <-chan *driverpb.FingerprintResponse, errc <-chan error, want driverpb.FingerprintResponse_Health, within time.Duration) *driverpb.FingerprintResponse {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case fp := <-vals:
			if fp.GetHealth() == want {
				return fp
			}
		case err := <-errc:
			t.Fatalf("fingerprint stream ended: %v", err)
		case <-deadline:
			t.Fatalf("no %v fingerprint within %v", want, within)
		}
	}
}

func TestFingerprintFollowsEngine(t *testing.T) {
	proxy := newEngineProxy(t)
	c := startAgent(t, fmt.Sprintf("%s = %q", endpointAttr, proxy.endpoint()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.Fingerprint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vals, errc := recvAll(s.Recv)
	waitHealth(t, vals, errc, driverpb.FingerprintResponse_HEALTHY, 5*time.Second)

	proxy.stop()
	down := waitHealth(t, vals, errc, driverpb.FingerprintResponse_UNHEALTHY, 45*time.Second)
	desc := down.GetHealthDescription()
	if !strings.Contains(desc, proxy.path) || !strings.Contains(strings.ToLower(desc), "docker") {
		t.Errorf("unhealthy description should name the engine endpoint: %q", desc)
	}

	proxy.start()
	waitHealth(t, vals, errc, driverpb.FingerprintResponse_HEALTHY, 45*time.Second)
	select {
	case <-c.Plugin.Exited():
		t.Fatal("the plugin exited")
	default:
	}
}

func TestDockerAbsentIsUnhealthyNotACrash(t *testing.T) {
	missing := "unix://" + t.TempDir() + "/no-docker.sock"
	c := startAgent(t, fmt.Sprintf("%s = %q", endpointAttr, missing))
	fp := firstFingerprint(t, c)
	if fp.GetHealth() != driverpb.FingerprintResponse_UNHEALTHY {
		t.Fatalf("health %v", fp.GetHealth())
	}
	if !strings.Contains(fp.GetHealthDescription(), "no-docker.sock") {
		t.Errorf("description should say where it looked: %q", fp.GetHealthDescription())
	}
	again := firstFingerprint(t, c)
	if again.GetHealthDescription() != fp.GetHealthDescription() {
		t.Errorf("description must be stable: %q then %q", fp.GetHealthDescription(), again.GetHealthDescription())
	}
}

func TestInitIdempotentAndUnknownTasks(t *testing.T) {
	c := startAgent(t, "")
	ctx := ctxFor(t, 30*time.Second)
	for i := 0; i < 3; i++ {
		if _, err := c.Plugin.Driver.Init(ctx, &driverpb.InitRequest{}); err != nil {
			t.Fatalf("Init #%d: %v", i+2, err)
		}
	}
	id := harness.NewAllocID() + "/app/0badc0de"
	if _, err := c.Plugin.Driver.StopTask(ctx, &driverpb.StopTaskRequest{TaskId: id, Signal: "SIGTERM"}); err != nil {
		t.Errorf("StopTask of an unknown id: %v", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.Plugin.Driver.DestroyTask(ctx, &driverpb.DestroyTaskRequest{TaskId: id, Force: true}); err != nil {
			t.Errorf("DestroyTask of an unknown id: %v", err)
		}
	}
}

// The sequences a client runs after its own restart and after a plugin
// crash work, and leave a healthy, serving plugin.
func TestAgentRestartAndPluginCrash(t *testing.T) {
	c := startAgent(t, "")
	ctx := ctxFor(t, 60*time.Second)
	pid := c.Plugin.Pid()
	if err := c.RestartAgent(ctx); err != nil {
		t.Fatalf("agent restart: %v", err)
	}
	if c.Plugin.Pid() != pid {
		t.Fatal("re-attach must reuse the running plugin")
	}
	if fp := firstFingerprint(t, c); fp.GetHealth() != driverpb.FingerprintResponse_HEALTHY {
		t.Fatalf("after re-attach: %v", fp.GetHealth())
	}
	if err := c.CrashPlugin(ctx); err != nil {
		t.Fatalf("plugin crash: %v", err)
	}
	if c.Plugin.Pid() == pid {
		t.Fatal("a crash must give a new plugin process")
	}
	if fp := firstFingerprint(t, c); fp.GetHealth() != driverpb.FingerprintResponse_HEALTHY {
		t.Fatalf("after relaunch: %v", fp.GetHealth())
	}
	if _, err := c.Plugin.Driver.Shutdown(ctx, &driverpb.ShutdownRequest{}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
