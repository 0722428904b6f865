package driver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// TestSyncerTaskGatesTheApp runs one instance of a Bedrock group through
// the driver: the syncer task (a container of the plugin's own binary, in
// the Consul mode) wins the election of its group on a real Consul, the
// app task in the same allocation starts only then, the data the app
// writes is in the syncer's capture mount (the default mode), and stopping
// the syncer stops the app.
func TestSyncerTaskGatesTheApp(t *testing.T) {
	requireDocker(t)
	testutil.RequireConsul(t)
	c := consul.Start(t)
	agent := startAgent(t, fmt.Sprintf("consul {\n  address = %q\n}\n", c.HTTPAddr()))
	dataDir := t.TempDir()
	alloc := harness.NewAllocID()
	syncPort, err := harness.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	httpPort, err := harness.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ports := []harness.Port{{Label: "sync", Value: syncPort}, {Label: "http", To: 8080, Value: httpPort}}
	job := "web" + alloc[:6]

	syncer := startSyncerTask(t, agent, dataDir, job, alloc, ports)

	app, err := agent.PrepareTask(dataDir, harness.TaskSpec{
		Job: job, Group: "g", Task: "app", AllocID: alloc, Ports: ports,
		Config: appConfig(`args = ["sh", "-c", "echo written-by-master > /data/proof; exec sleep 300"]`, `data = "/data"`),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(app.Logs.Close)
	if err := agent.StartTask(ctxFor(t, time.Minute), app); err != nil {
		t.Fatalf("app task: %v", err)
	}
	t.Cleanup(func() { destroy(t, agent, app) })

	// The lone instance is elected; its app starts and writes its data.
	waitRunning(t, app, true, 30*time.Second)
	// In the default mode (async) the app's data path is the capture mount the syncer serves at
	// alloc/bedrock-live, which the node sees too.
	proof := filepath.Join(filepath.Dir(app.SharedDataDir()), "bedrock-live", "proof")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(proof); err == nil && string(b) == "written-by-master\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the master's app never wrote to the shared data dir; syncer logs: %s", syncer.Logs.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Stopping the syncer (graceful: it steps down first) stops the app.
	if err := agent.StopTask(ctxFor(t, 30*time.Second), syncer, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, app, false, 5*time.Second)
}

// TestSyncerFailureIsATaskEvent: a syncer that cannot use Consul exits non-zero, and the reason,
// with what to do about it, reaches the task's events (what the Nomad UI shows), not only its
// stderr: no agent at the configured address, and a token the ACLs deny.
func TestSyncerFailureIsATaskEvent(t *testing.T) {
	requireDocker(t)
	t.Run("no Consul agent", func(t *testing.T) {
		closed, err := harness.FreePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		syncerFailureEvent(t, fmt.Sprintf("consul {\n  address = \"127.0.0.1:%d\"\n}\n", closed),
			"no Consul agent answers", "consul.address")
	})
	t.Run("ACL denied", func(t *testing.T) {
		testutil.RequireConsul(t)
		c := consul.Start(t, consul.WithHCL(`acl {
  enabled        = true
  default_policy = "allow"
  tokens {
    initial_management = "bedrock-test-management"
  }
}`))
		cfg := c.Server.APIConfig()
		cfg.Token = "bedrock-test-management"
		admin, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		pol, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "no-sessions",
			Rules: `session_prefix "" { policy = "deny" }
key_prefix "" { policy = "deny" }`}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		syncerFailureEvent(t, fmt.Sprintf("consul {\n  address = %q\n  token = %q\n}\n", c.HTTPAddr(), tok.SecretID),
			"Permission denied", "session:write")
	})
}

// syncerFailureEvent starts a syncer task on a plugin configured with pluginHCL, waits for it
// to fail and for the task event that tells why, which must contain every one of want.
func syncerFailureEvent(t *testing.T, pluginHCL string, want ...string) {
	t.Helper()
	agent := startAgent(t, pluginHCL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev, err := agent.TaskEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 64)
	go func() {
		for {
			e, err := ev.Recv()
			if err != nil {
				return
			}
			got <- e.GetMessage()
		}
	}()
	alloc := harness.NewAllocID()
	syncPort, err := harness.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	syncer := startSyncerTask(t, agent, t.TempDir(), "fail"+alloc[:6], alloc, []harness.Port{{Label: "sync", Value: syncPort}})
	res, err := agent.WaitTask(ctxFor(t, time.Minute), syncer)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode == 0 {
		t.Fatalf("the syncer exited with %d, want a failure", res.ExitCode)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-got:
			if !strings.HasPrefix(m, "Syncer exited with code") {
				continue
			}
			for _, w := range want {
				if !strings.Contains(m, w) {
					t.Fatalf("the event does not say the cause and the fix (%q): %q", w, m)
				}
			}
			t.Logf("event: %s", m)
			return
		case <-deadline:
			t.Fatalf("no task event tells why the syncer exited; its stderr: %s", syncer.Logs.Stderr())
		}
	}
}

// startSyncerTask starts the syncer task of allocation alloc of job (group "g") on agent; it is
// destroyed with the test.
func startSyncerTask(t *testing.T, agent *harness.Client, dataDir, job, alloc string, ports []harness.Port) *harness.Task {
	t.Helper()
	syncer, err := agent.PrepareTask(dataDir, harness.TaskSpec{
		Job: job, Group: "g", Task: "syncer", AllocID: alloc, Ports: ports,
		Config: `syncer {
		  port   = "sync"
		  secret = "0123456789abcdef-driver-test"
		}`,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(syncer.Logs.Close)
	if err := agent.StartTask(ctxFor(t, 3*time.Minute), syncer); err != nil {
		t.Fatalf("syncer task: %v", err)
	}
	t.Cleanup(func() { destroy(t, agent, syncer) })
	return syncer
}
