package syncer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
)

type elected struct {
	id   string
	dir  string
	cmd  *exec.Cmd
	gate *announce.Gate
	logs *lockedBuf
	done chan struct{}
}

// startElected runs a real syncer process in the Consul mode the driver
// uses, on one Consul node, and follows its role socket like the driver.
func startElected(t *testing.T, node *consul.Node, id string, servicePort int) *elected {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "role.sock")
	listen := freeAddr(t)
	e := &elected{id: id, dir: data, logs: &lockedBuf{}, done: make(chan struct{})}
	e.cmd = exec.Command(os.Args[0], "-data", data, "-listen", listen, "-consul", node.HTTPAddr,
		"-job", "web", "-group", "g", "-id", id, "-node", node.Name, "-announce", sock,
		"-service", "web", "-service-port", fmt.Sprint(servicePort), "-tag", "traefik.enable=true")
	e.cmd.Env = append(os.Environ(), reexecEnv+"=1", DefaultSecretEnv+"="+testSecret)
	e.cmd.Stderr = e.logs
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = e.cmd.Wait(); close(e.done) }()
	ctx, cancel := context.WithCancel(context.Background())
	e.gate = announce.Follow(ctx, sock, announce.GateConfig{})
	go func() {
		for st := range e.gate.Updates() {
			e.gate.Report(st.Open)
		}
	}()
	t.Cleanup(func() {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(10 * time.Second):
			_ = e.cmd.Process.Kill()
		}
		cancel()
		if t.Failed() {
			t.Logf("%s logs:\n%s", id, tailLines(e.logs.String(), 40))
		}
	})
	return e
}

func openGates(es []*elected) []*elected {
	var out []*elected
	for _, e := range es {
		if e.gate.MayRun(time.Now()) {
			out = append(out, e)
		}
	}
	return out
}

func waitMaster(t *testing.T, es []*elected, not *elected, within time.Duration) *elected {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		open := openGates(es)
		if len(open) > 1 {
			t.Fatalf("two masters: %s and %s", open[0].id, open[1].id)
		}
		if len(open) == 1 && open[0] != not {
			return open[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no master within %v", within)
	return nil
}

func serviceTags(t *testing.T, c *api.Client) map[string][]string {
	t.Helper()
	entries, _, err := c.Catalog().Service("web", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range entries {
		out[e.ServiceID] = e.ServiceTags
	}
	return out
}

// TestElectedSyncers: three syncer processes in the driver's Consul mode
// on three Consul nodes elect one master, replicate its writes, tag the
// service by role, and hand over on a graceful stop without overlap.
func TestElectedSyncers(t *testing.T) {
	c := consul.Start(t, consul.WithClients(3))
	var es []*elected
	for i := 0; i < 3; i++ {
		es = append(es, startElected(t, c.Clients[i], fmt.Sprintf("alloc%d", i), 8080+i))
	}
	m := waitMaster(t, es, nil, 20*time.Second)

	// The master's writes reach the clones.
	if err := os.WriteFile(filepath.Join(m.dir, "hello.txt"), []byte("term one"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e == m {
			continue
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			b, err := os.ReadFile(filepath.Join(e.dir, "hello.txt"))
			if err == nil && string(b) == "term one" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never received the master's write", e.id)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// Only the master carries "master" and the user tags.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tags := serviceTags(t, c.Client())
		ok := len(tags) == 3
		for id, tg := range tags {
			isMaster := strings.HasSuffix(id, m.id)
			has := strings.Join(tg, ",")
			if isMaster != strings.Contains(has, "master") || isMaster != strings.Contains(has, "traefik.enable=true") {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service tags never matched the roles: %v (master %s)", tags, m.id)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Graceful stop: another takes over quickly, never two at once.
	start := time.Now()
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	n := waitMaster(t, es, m, 15*time.Second)
	t.Logf("graceful hand-over %s -> %s: %v", m.id, n.id, time.Since(start))
	if b, err := os.ReadFile(filepath.Join(n.dir, "hello.txt")); err != nil || string(b) != "term one" {
		t.Errorf("the new master lost the replicated write: %q %v", b, err)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
