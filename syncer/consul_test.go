package syncer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

type elected struct {
	id   string
	ip   string // the address the instance registers (its Consul node's)
	addr string // its replication address
	dir  string
	cmd  *exec.Cmd
	gate *announce.Gate
	logs *testutil.Buffer
	done chan struct{}
	// closes counts the times the gate closed on an open app (a demotion,
	// or a late heartbeat under load): the fake driver reports the app
	// stopped each time, which takes the master out of DNS.
	closes atomic.Int32
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
	// on the node's own loopback address, so each instance registers a
	// distinct address (DNS answers tell them apart)
	listen := freeAddrOn(t, node.IP)
	e := &elected{id: id, ip: node.IP, addr: listen, dir: data, logs: &testutil.Buffer{}, done: make(chan struct{})}
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
		open := false
		for st := range e.gate.Updates() {
			if open && !st.Open {
				e.closes.Add(1)
			}
			open = st.Open
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

func freeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
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
	testutil.RequireConsul(t)
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

// dnsLookup asks a Consul agent's DNS interface (UDP) for name's addresses,
// sorted; a name without healthy instances has none.
func dnsLookup(t *testing.T, dnsAddr, name string) []string {
	t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dnsAddr)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return nil
	}
	if err != nil {
		t.Fatalf("DNS %s at %s: %v", name, dnsAddr, err)
	}
	sort.Strings(addrs)
	return addrs
}

// agentChecks returns the instance's service checks as its own agent sees
// them (outputs reach the catalog only every few minutes), by check name.
func agentChecks(t *testing.T, node *consul.Node, e *elected) map[string]*api.AgentCheck {
	t.Helper()
	checks, err := node.APIClient(t).Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*api.AgentCheck{}
	for _, c := range checks {
		if c.ServiceID == "web-"+e.id {
			out[c.Name] = c
		}
	}
	return out
}

// TestMasterDNS: master.web.service.consul, asked of a Consul agent's DNS
// interface, answers with the master's address alone: after a graceful
// hand-over the new master's address is the only answer within a second of
// its promotion, the old master's never again; a killed master's instance
// goes critical by its TTL check and is no longer returned, and the next
// master is. The checks' outputs say each instance's role.
func TestMasterDNS(t *testing.T) {
	testutil.RequireConsul(t)
	c := consul.Start(t, consul.WithClients(3))
	var es []*elected
	for i := 0; i < 3; i++ {
		es = append(es, startElected(t, c.Clients[i], fmt.Sprintf("alloc%d", i), 8080+i))
	}
	nodeOf := func(e *elected) *consul.Node {
		for i, x := range es {
			if x == e {
				return c.Clients[i]
			}
		}
		return nil
	}
	dnsAddr := net.JoinHostPort(c.Clients[0].IP, fmt.Sprint(c.Clients[0].DNSPort))
	const name = "master.web.service.consul."
	m := waitMaster(t, es, nil, 20*time.Second)
	waitDNS := func(want []string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		var got []string
		for time.Since(start) < within {
			got = dnsLookup(t, dnsAddr, name)
			if len(got) > 1 {
				t.Fatalf("%s answers with %d instances: %v", name, len(got), got)
			}
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return time.Since(start)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("%s answers %v, want %v", name, got, want)
		return 0
	}
	waitDNS([]string{m.ip}, 15*time.Second)

	// The checks say who is what.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := true
		var seen []string
		for _, e := range es {
			cs := agentChecks(t, nodeOf(e), e)
			sc, ac := cs["bedrock syncer"], cs["bedrock app"]
			if sc == nil || ac == nil {
				ok = false
				continue
			}
			seen = append(seen, e.id+": "+sc.Status+" "+sc.Output+" / "+ac.Status+" "+ac.Output)
			if e == m {
				ok = ok && sc.Status == api.HealthPassing && strings.HasPrefix(sc.Output, "master at term ") &&
					ac.Status == api.HealthPassing && strings.HasPrefix(ac.Output, "app running")
			} else {
				ok = ok && sc.Status == api.HealthPassing && sc.Output == fmt.Sprintf("clone following %s, lag 0", m.addr) &&
					ac.Status == api.HealthPassing
			}
		}
		if ok {
			t.Logf("checks:\n%s", strings.Join(seen, "\n"))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checks never matched the roles:\n%s", strings.Join(seen, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Graceful stop: watch the gates and the DNS answers side by side.
	stopAt := time.Now()
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	var n *elected
	var promoted time.Time
	for time.Since(stopAt) < 20*time.Second {
		if n == nil {
			if open := openGates(es); len(open) == 1 && open[0] != m {
				n, promoted = open[0], time.Now()
			}
		}
		got := dnsLookup(t, dnsAddr, name)
		if len(got) > 1 {
			t.Fatalf("%s answers with %d instances during the hand-over: %v", name, len(got), got)
		}
		if n != nil && len(got) == 1 && got[0] == m.ip {
			t.Fatalf("%s still answers with the old master %s after the promotion of %s", name, m.ip, n.ip)
		}
		if n != nil && len(got) == 1 && got[0] == n.ip {
			d := time.Since(promoted)
			t.Logf("graceful hand-over %s -> %s: DNS answers the new master alone %v after its promotion (%v after the stop)",
				m.id, n.id, d.Round(time.Millisecond), time.Since(stopAt).Round(time.Millisecond))
			if d > time.Second {
				t.Errorf("DNS took %v after the promotion to answer with the new master", d)
			}
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n == nil {
		t.Fatal("no promotion after the graceful stop")
	}
	// From then on it stays the answer: no flapping (e.g. the master tag
	// showing before the app check says the app is not running yet), unless
	// n's gate closes, which the fake driver reports as the app stopped.
	closes := n.closes.Load()
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if got := dnsLookup(t, dnsAddr, name); (len(got) != 1 || got[0] != n.ip) && n.closes.Load() == closes {
			t.Fatalf("%s answered %v after it had answered the new master %s alone", name, got, n.ip)
		}
	}
	<-m.done
	waitDNS([]string{n.ip}, 3*time.Second)

	// kill -9 the new master: its instance goes critical by the TTL and
	// leaves DNS; the last syncer takes over and is the answer.
	var last *elected
	for _, e := range es {
		if e != m && e != n {
			last = e
		}
	}
	// The last one must hold a complete copy of the new master's term, or
	// it may not be promoted (an unfinished initial sync).
	term := n.gate.Status(time.Now()).State.Term
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		st := last.gate.Status(time.Now()).State
		if st.Role == core.RoleClone && st.MasterAddr == n.addr && st.CaughtUp && st.Position.Term == term {
			break
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("%s never caught up with %s at term %d: %+v", last.id, n.id, term, st)
		}
	}
	killed := time.Now()
	_ = n.cmd.Process.Kill()
	<-n.done
	for {
		cs := agentChecks(t, nodeOf(n), n)
		if sc := cs["bedrock syncer"]; sc != nil && sc.Status == api.HealthCritical {
			t.Logf("killed master's syncer check critical after %v: %q", time.Since(killed).Round(time.Millisecond), sc.Output)
			break
		}
		if time.Since(killed) > checkTTL+2*time.Second {
			t.Fatalf("the killed syncer's check is not critical %v after the kill: %+v", time.Since(killed), cs["bedrock syncer"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	// the agent's check turned critical; the catalog the DNS answers from
	// hears of it through the agent's sync, which a loaded machine delays
	waitDNS(nil, 5*time.Second)
	t.Logf("killed master out of DNS %v after the kill", time.Since(killed).Round(time.Millisecond))
	entries, _, err := c.Client().Health().Service("web", "master", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Service.ID == "web-"+n.id && e.Checks.AggregatedStatus() != api.HealthCritical {
			t.Errorf("the killed master's instance is %s, want critical", e.Checks.AggregatedStatus())
		}
	}
	if got := waitMaster(t, es, n, 30*time.Second); got != last {
		t.Fatalf("%s became master, want %s", got.id, last.id)
	}
	waitDNS([]string{last.ip}, 5*time.Second)
	t.Logf("after the kill: %s answers %s alone %v after the kill", name, last.ip, time.Since(killed).Round(time.Millisecond))
}
