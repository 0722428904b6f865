package driver_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// TestSyncerTaskGatesTheApp runs one instance of a Bedrock group through
// the driver: the syncer task (a container of the plugin's own binary, in
// the Consul mode) wins the election of its group on a real Consul, the
// app task in the same allocation starts only then, the data the app
// writes is in the shared data dir, and stopping the syncer stops the app.
func TestSyncerTaskGatesTheApp(t *testing.T) {
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
	proof := filepath.Join(app.SharedDataDir(), "proof")
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
