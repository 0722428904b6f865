// Package consul starts real Consul agents for Bedrock's tests: one dev server on 127.0.0.1 and
// N client agents on 127.0.0.2, 127.0.0.3, ..., every one on its own random free ports, each client
// with its own data directory and node name, joined to the server.
//
// The agent binary comes from $BEDROCK_CONSUL_BIN, else `consul` on PATH, else the cached build of
// scripts/consul.sh ($BEDROCK_CACHE/consul-v1.12.9/consul, BEDROCK_CACHE defaulting to
// ${XDG_CACHE_HOME:-$HOME/.cache}/bedrock). With none of them the test fails and says to run
// `make consul`.
//
// The server allows session TTLs down to 1s (Consul's default minimum is 10s) so that leader
// elections built on sessions can use TTLs in the low seconds; see WithSessionTTLMin.
//
// Linux only (client agents bind to 127.0.0.x, which Linux routes on lo without setup).
//
// With WithNetns, each client agent runs in a network namespace of its own instead, on a private
// segment with the host (see package netns), so that a test can cut one agent off the cluster:
// Partition and Heal. The server then also listens on the host's address on that segment.
package consul

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/netns"
)

// Version is the Consul release the project builds and tests against.
const Version = "v1.12.9"

// EnvBinary names the environment variable that points at the consul binary to use.
const EnvBinary = "BEDROCK_CONSUL_BIN"

// Serf member status values as reported by /v1/agent/members (api.AgentMember.Status).
const (
	MemberAlive   = 1
	MemberLeaving = 2
	MemberLeft    = 3
	MemberFailed  = 4
)

type config struct {
	clients       int
	binary        string
	sessionTTLMin time.Duration
	startTimeout  time.Duration
	extraHCL      []string
	logLevel      string
	verbose       bool
	netns         bool
}

// Option configures Start.
type Option func(*config)

// WithClients sets the number of client agents (default 0: the server alone).
func WithClients(n int) Option { return func(c *config) { c.clients = n } }

// WithBinary uses the given consul binary instead of looking one up.
func WithBinary(path string) Option { return func(c *config) { c.binary = path } }

// WithSessionTTLMin sets the server's session_ttl_min (default 1s; zero keeps Consul's own
// default, 10s: a stock server).
func WithSessionTTLMin(d time.Duration) Option { return func(c *config) { c.sessionTTLMin = d } }

// WithStartTimeout bounds how long Start waits for the cluster to be ready (default 45s).
func WithStartTimeout(d time.Duration) Option { return func(c *config) { c.startTimeout = d } }

// WithHCL adds an HCL config fragment (Consul's -hcl flag) to every agent, e.g.
// `gossip_lan { probe_interval = "500ms" }` to detect lost nodes faster.
func WithHCL(fragment string) Option {
	return func(c *config) { c.extraHCL = append(c.extraHCL, fragment) }
}

// WithLogLevel sets the agents' log level (default "info").
func WithLogLevel(level string) Option { return func(c *config) { c.logLevel = level } }

// WithVerbose copies every agent's log lines to t.Log as they come (default: only on failure).
func WithVerbose() Option { return func(c *config) { c.verbose = true } }

// WithNetns runs each client agent in a network namespace of its own, so that Partition can cut it
// off. The namespaces hang off a private segment (netns.Switch, an IPv4 /24 picked at random and
// checked to be unused): the host has the segment's .1 (Cluster.Switch.HostIP) and client agent i
// (0-based) has .(i+2), which is its Node.IP, where it binds, advertises and serves (HTTP
// 8500, DNS 8600, Serf LAN 8301, Serf WAN 8302, server RPC 8300, gRPC 8502: the namespace is
// its own; its HTTP API also answers on 127.0.0.1:8500 inside the namespace, for `ip netns exec`).
// Processes of the host reach every agent's HTTP API at its Node.HTTPAddr; client agents reach
// each other directly across the segment; nothing inside a namespace reaches anything beyond the
// segment.
//
// The server stays in the host's namespace: it binds and advertises Serf and RPC on the host's
// segment address (Node.AdvertiseIP) and serves HTTP and DNS on both 127.0.0.1 and that address,
// so its Node.IP, HTTPAddr, Cluster.HTTPAddr and DNSAddr stay on 127.0.0.1.
//
// Start skips the test (t.Skip) when network namespaces are unavailable (not root, no `ip`, or
// `ip netns` failing). Everything is removed at cleanup, even after a failed test; what a crashed
// earlier run left is removed at start. Linux only.
func WithNetns() Option { return func(c *config) { c.netns = true } }

// Node is one Consul agent of a Cluster.
type Node struct {
	// Name is the Consul node name: "server", "client-1", "client-2", ...
	Name string
	// IP is the address where processes of the host reach the agent (HTTP, DNS): a loopback
	// address, or with WithNetns the client agent's address on the private segment (owned by its
	// namespace: processes of the host cannot bind it).
	IP string
	// AdvertiseIP is the address the agent binds Serf and RPC on and advertises to the cluster (its
	// member address). It equals IP, except for the server under WithNetns (the host's segment
	// address).
	AdvertiseIP string
	// Netns is the network namespace the agent runs in (WithNetns clients), empty for the host's.
	Netns string
	// Server tells whether the agent is the (dev) server.
	Server bool
	// HTTPAddr is host:port of the agent's HTTP API.
	HTTPAddr string
	// HTTPPort, DNSPort, SerfLANPort, SerfWANPort, ServerPort and GRPCPort are the agent's ports.
	HTTPPort, DNSPort, SerfLANPort, SerfWANPort, ServerPort, GRPCPort int
	// DataDir is the agent's data directory (empty for the dev server, which keeps state in memory).
	DataDir string
	// LogPath is the file receiving the agent's output.
	LogPath string

	port *netns.Port // WithNetns clients: the namespace's port on the segment

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current process has exited
	args []string
}

// Cluster is a running set of Consul agents; see Start.
type Cluster struct {
	// Server is the dev server on 127.0.0.1.
	Server *Node
	// Clients are the client agents, Clients[i] on 127.0.0.(i+2) (WithNetns: on the segment's
	// .(i+2), in a namespace of its own).
	Clients []*Node
	// Binary is the consul binary in use.
	Binary string
	// Switch is the private segment the client agents' namespaces hang off (WithNetns), else nil.
	Switch *netns.Switch

	t   testing.TB
	cfg config
	dir string
}

// Binary returns the consul binary to use: $BEDROCK_CONSUL_BIN, else `consul` on PATH, else the
// cached build of scripts/consul.sh. It fails when there is none.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s is not an executable file", EnvBinary, p)
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	if p := cachedBinary(); p != "" && isExecutable(p) {
		return p, nil
	}
	return "", fmt.Errorf("no consul binary: set %s, put consul on PATH, or run `make consul` "+
		"to build Consul %s into %s", EnvBinary, Version, cachedBinary())
}

func cachedBinary() string {
	cache := os.Getenv("BEDROCK_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return ""
			}
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "bedrock")
	}
	return filepath.Join(cache, "consul-"+Version, "consul")
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Start starts a dev server and the requested client agents, waits until every member is alive
// and a leader is elected, and registers their shutdown with t.Cleanup. It calls t.Fatal on error.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	cfg := config{sessionTTLMin: time.Second, startTimeout: 45 * time.Second, logLevel: "info"}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.clients < 0 || cfg.clients > 250 {
		t.Fatalf("consul: %d client agents is out of range", cfg.clients)
	}
	bin := cfg.binary
	if bin == "" {
		var err error
		if bin, err = Binary(); err != nil {
			t.Fatalf("consul: %v", err)
		}
	}
	c := &Cluster{Binary: bin, t: t, cfg: cfg, dir: t.TempDir()}
	if cfg.netns {
		// registered before c.Stop, so it runs after the agents are gone
		c.Switch = startSwitch(t)
	}
	t.Cleanup(c.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), cfg.startTimeout)
	defer cancel()

	c.Server = &Node{Name: "server", IP: "127.0.0.1", AdvertiseIP: "127.0.0.1", Server: true}
	if c.Switch != nil {
		c.Server.AdvertiseIP = c.Switch.HostIP.String()
	}
	if err := c.launch(ctx, c.Server); err != nil {
		t.Fatalf("consul: start server: %v", err)
	}
	for i := 0; i < cfg.clients; i++ {
		n := &Node{Name: fmt.Sprintf("client-%d", i+1), IP: fmt.Sprintf("127.0.0.%d", i+2)}
		if c.Switch != nil {
			p, err := c.Switch.Attach()
			if err != nil {
				t.Fatalf("consul: namespace for %s: %v", n.Name, err)
			}
			n.port, n.Netns, n.IP = p, p.Netns, p.IP.String()
		}
		n.AdvertiseIP = n.IP
		n.DataDir = filepath.Join(c.dir, n.Name, "data")
		c.Clients = append(c.Clients, n)
	}
	var g errgroup.Group // the clients side by side
	for _, n := range c.Clients {
		g.Go(func() error { return c.launch(ctx, n) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("consul: start clients: %v", err)
	}
	if err := c.waitReady(ctx); err != nil {
		t.Fatalf("consul: cluster not ready within %s: %v", cfg.startTimeout, err)
	}
	return c
}

// startSwitch creates the segment for WithNetns, after removing what crashed runs left, and
// registers its removal with t.Cleanup. It skips the test when namespaces are unavailable.
func startSwitch(t testing.TB) *netns.Switch {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Skipf("consul: WithNetns: %v", err)
	}
	if removed, err := netns.CleanupStale(); err != nil {
		t.Logf("consul: removing leftovers of earlier runs: %v", err)
	} else if len(removed) > 0 {
		t.Logf("consul: removed leftovers of earlier runs: %s", strings.Join(removed, " "))
	}
	sw, err := netns.NewSwitch()
	if err != nil {
		t.Fatalf("consul: WithNetns: %v", err)
	}
	t.Cleanup(func() {
		if err := sw.Close(); err != nil {
			t.Errorf("consul: removing namespaces: %v", err)
		}
	})
	return sw
}

// Nodes returns the server followed by the clients.
func (c *Cluster) Nodes() []*Node {
	return append([]*Node{c.Server}, c.Clients...)
}

// HTTPAddr returns host:port of the server's HTTP API.
func (c *Cluster) HTTPAddr() string { return c.Server.HTTPAddr }

// DNSAddr returns host:port of the server's DNS interface.
func (c *Cluster) DNSAddr() string {
	return net.JoinHostPort(c.Server.IP, strconv.Itoa(c.Server.DNSPort))
}

// Client returns an API client talking to the server's HTTP API.
func (c *Cluster) Client() *api.Client { return c.Server.APIClient(c.t) }

// APIClient returns an API client talking to this agent's HTTP API.
func (n *Node) APIClient(t testing.TB) *api.Client {
	t.Helper()
	cl, err := n.newAPIClient()
	if err != nil {
		t.Fatalf("consul: api client for %s: %v", n.Name, err)
	}
	return cl
}

// APIConfig returns an api.Config for this agent's HTTP API.
func (n *Node) APIConfig() *api.Config {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = n.HTTPAddr
	cfg.Scheme = "http"
	cfg.Token = ""
	cfg.HttpClient = &http.Client{Timeout: 10 * time.Second, Transport: cfg.Transport}
	return cfg
}

func (n *Node) newAPIClient() (*api.Client, error) { return api.NewClient(n.APIConfig()) }

// Running tells whether the agent's process is running (a paused one counts as running).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Pid returns the agent's process id, or 0 when it is not running.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// --- starting and stopping agents ---

func (c *Cluster) launch(ctx context.Context, n *Node) error {
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		if n.Netns != "" {
			n.fixedPorts()
		} else if err := c.allocatePorts(n); err != nil {
			return err
		}
		n.args = c.args(n)
		lastErr = c.spawn(ctx, n)
		if lastErr == nil {
			return nil
		}
		// a port taken between picking and binding is retried with fresh ports
		if !strings.Contains(lastErr.Error(), "address already in use") || ctx.Err() != nil {
			return lastErr
		}
		c.t.Logf("consul: %s: port clash, retrying with other ports", n.Name)
	}
	return lastErr
}

func (c *Cluster) args(n *Node) []string {
	hcl := []string{
		`disable_update_check = true`,
		`log_level = "` + c.cfg.logLevel + `"`,
	}
	a := []string{"agent",
		"-node=" + n.Name,
		"-datacenter=dc1",
		"-bind=" + n.AdvertiseIP,
		"-client=" + n.clientAddrs(),
		"-advertise=" + n.AdvertiseIP,
		"-http-port=" + strconv.Itoa(n.HTTPPort),
		"-dns-port=" + strconv.Itoa(n.DNSPort),
		"-grpc-port=" + strconv.Itoa(n.GRPCPort),
		"-serf-lan-port=" + strconv.Itoa(n.SerfLANPort),
		"-serf-wan-port=" + strconv.Itoa(n.SerfWANPort),
		"-server-port=" + strconv.Itoa(n.ServerPort),
	}
	if n.Server {
		a = append(a, "-dev")
		// allow short session TTLs for elections (Consul's default minimum is 10s); zero
		// leaves Consul's own default (a stock server)
		if c.cfg.sessionTTLMin > 0 {
			hcl = append(hcl, fmt.Sprintf(`session_ttl_min = "%s"`, c.cfg.sessionTTLMin))
		}
	} else {
		a = append(a,
			"-server=false",
			"-data-dir="+n.DataDir,
			"-retry-join="+c.serverSerfAddr(),
			"-retry-interval=1s",
		)
		hcl = append(hcl, `leave_on_terminate = false`)
	}
	hcl = append(hcl, c.cfg.extraHCL...)
	for _, h := range hcl {
		a = append(a, "-hcl", h)
	}
	return a
}

// clientAddrs returns the addresses the agent serves HTTP and DNS on (Consul's -client, a
// space-separated list).
func (n *Node) clientAddrs() string {
	switch {
	case n.Netns != "":
		return n.IP + " 127.0.0.1"
	case n.AdvertiseIP != n.IP:
		return n.IP + " " + n.AdvertiseIP
	default:
		return n.IP
	}
}

func (c *Cluster) serverSerfAddr() string {
	return net.JoinHostPort(c.Server.AdvertiseIP, strconv.Itoa(c.Server.SerfLANPort))
}

// fixedPorts gives an agent in a namespace of its own Consul's default ports.
func (n *Node) fixedPorts() {
	n.HTTPPort, n.DNSPort, n.SerfLANPort, n.SerfWANPort, n.ServerPort, n.GRPCPort = 8500, 8600, 8301, 8302, 8300, 8502
	n.HTTPAddr = net.JoinHostPort(n.IP, strconv.Itoa(n.HTTPPort))
}

// allocatePorts picks ports free on n.IP (and n.AdvertiseIP), holding all of them open until
// every one is picked so the agent's own ports differ; TCP+UDP for the Serf and DNS ports.
func (c *Cluster) allocatePorts(n *Node) error {
	var closers []func()
	defer func() {
		for _, f := range closers {
			f()
		}
	}()
	// hold binds port (TCP and/or UDP) on every address of ips, or releases what it bound and
	// says no
	hold := func(port int, tcp, udp bool, ips []string) bool {
		var mine []func()
		ok := true
		for _, ip := range ips {
			addr := net.JoinHostPort(ip, strconv.Itoa(port))
			if tcp {
				if l, err := net.Listen("tcp", addr); err == nil {
					mine = append(mine, func() { _ = l.Close() })
				} else {
					ok = false
					break
				}
			}
			if udp {
				if u, err := net.ListenPacket("udp", addr); err == nil {
					mine = append(mine, func() { _ = u.Close() })
				} else {
					ok = false
					break
				}
			}
		}
		if !ok {
			for _, f := range mine {
				f()
			}
			return false
		}
		closers = append(closers, mine...)
		return true
	}
	var others []string
	if n.AdvertiseIP != "" && n.AdvertiseIP != n.IP {
		others = append(others, n.AdvertiseIP)
	}
	pick := func(udp bool) (int, error) {
		for range 50 {
			l, err := net.Listen("tcp", net.JoinHostPort(n.IP, "0"))
			if err != nil {
				return 0, fmt.Errorf("listen on %s: %w", n.IP, err)
			}
			port := l.Addr().(*net.TCPAddr).Port
			if udp && !hold(port, false, true, []string{n.IP}) {
				_ = l.Close()
				continue
			}
			if !hold(port, true, udp, others) {
				_ = l.Close()
				continue
			}
			closers = append(closers, func() { _ = l.Close() })
			return port, nil
		}
		return 0, fmt.Errorf("no free TCP+UDP port on %s", strings.Join(append([]string{n.IP}, others...), ", "))
	}
	var err error
	ports := []struct {
		p   *int
		udp bool
	}{{&n.HTTPPort, false}, {&n.DNSPort, true}, {&n.SerfLANPort, true}, {&n.SerfWANPort, true},
		{&n.ServerPort, false}, {&n.GRPCPort, false}}
	for _, p := range ports {
		if *p.p, err = pick(p.udp); err != nil {
			return err
		}
	}
	n.HTTPAddr = net.JoinHostPort(n.IP, strconv.Itoa(n.HTTPPort))
	return nil
}

// spawn starts n's process (with n.args) in its own process group and waits until its HTTP API
// answers.
func (c *Cluster) spawn(ctx context.Context, n *Node) error {
	if n.DataDir != "" {
		if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
			return err
		}
	}
	if n.LogPath == "" {
		n.LogPath = filepath.Join(c.dir, n.Name+".log")
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = logf.Close() }()
	start, _ := logf.Seek(0, io.SeekEnd)

	cmd := exec.Command(c.Binary, n.args...)
	if n.Netns != "" {
		// `ip netns exec` execs the agent: the pid stays the agent's
		cmd = netns.Command(n.Netns, c.Binary, n.args...)
	}
	cmd.Dir = c.dir
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out := logf
	if c.cfg.verbose {
		pr, pw, err := os.Pipe()
		if err != nil {
			return err
		}
		go c.copyLog(n.Name, pr, logf)
		out = pw
		defer func() { _ = pw.Close() }()
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.Binary, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(done)
	}()

	cl, err := n.newAPIClient()
	if err != nil {
		return err
	}
	for {
		if _, err := cl.Agent().Self(); err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited during start (%v): %s", n.Name, cmd.ProcessState, tailFrom(n.LogPath, start, 15))
		case <-ctx.Done():
			n.kill()
			return fmt.Errorf("%s: HTTP API on %s did not answer: %w: %s", n.Name, n.HTTPAddr, ctx.Err(),
				tailFrom(n.LogPath, start, 15))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) copyLog(name string, r *os.File, w *os.File) {
	defer func() { _ = r.Close() }()
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		_, _ = fmt.Fprintln(w, line)
		func() {
			defer func() { _ = recover() }() // t.Log after the test ended panics
			c.t.Logf("[%s] %s", name, line)
		}()
	}
}

// kill SIGKILLs n's process group and waits (bounded) for the process to be reaped.
func (n *Node) kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

// Stop kills every agent (SIGKILL to each process group) and waits, bounded, until they are gone.
// Start registers it with t.Cleanup; calling it again is harmless. On a failed test it logs the
// tail of each agent's log.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, n := range c.Nodes() {
		if n == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.kill()
		}()
	}
	wg.Wait()
	if c.t.Failed() {
		for _, n := range c.Nodes() {
			if n != nil && n.LogPath != "" {
				c.t.Logf("consul: last lines of %s's log:\n%s", n.Name, tailFrom(n.LogPath, 0, 40))
			}
		}
	}
}

// --- node loss ---

// KillClient SIGKILLs client agent i (0-based index into Clients) and its process group, as if
// its node were lost. The server notices through gossip after a few seconds; see WaitMemberStatus.
func (c *Cluster) KillClient(i int) {
	c.t.Helper()
	n := c.client(i)
	if !n.Running() {
		c.t.Fatalf("consul: %s is not running", n.Name)
	}
	n.kill()
}

// RestartClient starts client agent i again after KillClient, with the same node name, data dir
// and ports, and waits until the server sees it alive again.
func (c *Cluster) RestartClient(i int) {
	c.t.Helper()
	n := c.client(i)
	if n.Running() {
		c.t.Fatalf("consul: %s is still running; KillClient first", n.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.startTimeout)
	defer cancel()
	if err := c.spawn(ctx, n); err != nil {
		c.t.Fatalf("consul: restart %s: %v", n.Name, err)
	}
	if err := c.waitMember(ctx, n.Name, MemberAlive); err != nil {
		c.t.Fatalf("consul: restarted %s not alive: %v", n.Name, err)
	}
}

// PauseClient stops client agent i with SIGSTOP (a hung node: its sockets stay open but nothing
// answers); ResumeClient continues it.
func (c *Cluster) PauseClient(i int) { c.signalClient(i, syscall.SIGSTOP) }

// ResumeClient continues client agent i after PauseClient (SIGCONT).
func (c *Cluster) ResumeClient(i int) { c.signalClient(i, syscall.SIGCONT) }

func (c *Cluster) signalClient(i int, sig syscall.Signal) {
	c.t.Helper()
	n := c.client(i)
	pid := n.Pid()
	if pid == 0 || !n.Running() {
		c.t.Fatalf("consul: %s is not running", n.Name)
	}
	if err := syscall.Kill(-pid, sig); err != nil {
		c.t.Fatalf("consul: signal %s: %v", n.Name, err)
	}
}

// --- network partitions (WithNetns) ---

// Partition cuts client agent i (0-based index into Clients) off the network, as if its node's
// uplink died: it reaches neither the server, nor the other agents, nor the host, and processes of
// the host cannot reach its HTTP API (connections time out, they are not refused). The agent keeps
// running. The server notices through gossip like a lost node (the member turns failed, sessions
// bound to the node's serfHealth check are invalidated); see WaitMemberStatus. Idempotent;
// WithNetns only.
func (c *Cluster) Partition(i int) {
	c.t.Helper()
	n := c.netnsClient(i)
	if err := n.port.Cut(); err != nil {
		c.t.Fatalf("consul: partition %s: %v", n.Name, err)
	}
}

// Heal reconnects client agent i after Partition and waits (bounded by the start timeout) until
// the server sees it alive. Reconnected, the agent asks to join the server again, as an agent
// restarted with -retry-join would, rather than waiting for Serf's own periodic reconnection
// (see HealLink). Idempotent; WithNetns only.
func (c *Cluster) Heal(i int) {
	c.t.Helper()
	n := c.netnsClient(i)
	if err := n.port.Restore(); err != nil {
		c.t.Fatalf("consul: heal %s: %v", n.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.startTimeout)
	defer cancel()
	if err := c.rejoin(ctx, n); err != nil {
		c.t.Fatalf("consul: healed %s: %v", n.Name, err)
	}
	if err := c.waitMember(ctx, n.Name, MemberAlive); err != nil {
		c.t.Fatalf("consul: healed %s not alive: %v", n.Name, err)
	}
}

// HealLink reconnects client agent i after Partition and returns at once, leaving the agent and
// the server to find each other by themselves, through gossip: right away after a partition of a
// few seconds, but through Serf's reconnection of failed members (every 30s, randomized) after a
// longer one; 18 to 47s were measured after 10 to 40s partitions. Idempotent; WithNetns only.
func (c *Cluster) HealLink(i int) {
	c.t.Helper()
	n := c.netnsClient(i)
	if err := n.port.Restore(); err != nil {
		c.t.Fatalf("consul: heal %s: %v", n.Name, err)
	}
}

// Partitioned tells whether client agent i is cut off by Partition. WithNetns only.
func (c *Cluster) Partitioned(i int) bool {
	c.t.Helper()
	n := c.netnsClient(i)
	up, err := n.port.Connected()
	if err != nil {
		c.t.Fatalf("consul: %s: %v", n.Name, err)
	}
	return !up
}

// rejoin asks agent n to join the server (a no-op when they already know each other), retrying
// while its HTTP API does not answer yet.
func (c *Cluster) rejoin(ctx context.Context, n *Node) error {
	cl, err := n.newAPIClient()
	if err != nil {
		return err
	}
	for {
		err := cl.Agent().Join(c.serverSerfAddr(), false)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("join %s: %w (%w)", c.serverSerfAddr(), err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) netnsClient(i int) *Node {
	c.t.Helper()
	n := c.client(i)
	if n.port == nil {
		c.t.Fatalf("consul: %s has no network namespace: start the cluster WithNetns", n.Name)
	}
	return n
}

func (c *Cluster) client(i int) *Node {
	c.t.Helper()
	if i < 0 || i >= len(c.Clients) {
		c.t.Fatalf("consul: no client agent %d (have %d)", i, len(c.Clients))
	}
	return c.Clients[i]
}

// WaitMemberStatus waits until the server reports node name with the given Serf status
// (MemberAlive, MemberFailed, ...), failing the test after timeout.
func (c *Cluster) WaitMemberStatus(name string, status int, timeout time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.waitMember(ctx, name, status); err != nil {
		c.t.Fatalf("consul: %v", err)
	}
}

func (c *Cluster) waitMember(ctx context.Context, name string, status int) error {
	cl, err := c.Server.newAPIClient()
	if err != nil {
		return err
	}
	var last string
	for {
		ms, err := cl.Agent().Members(false)
		if err == nil {
			last = "not a member"
			for _, m := range ms {
				if m.Name == name {
					if m.Status == status {
						return nil
					}
					last = fmt.Sprintf("status %d", m.Status)
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not reach member status %d (last: %s): %w", name, status, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitReady waits until a leader is elected, the server lists every agent as alive, and every
// client agent knows the leader (so it can forward requests).
func (c *Cluster) waitReady(ctx context.Context) error {
	want := len(c.Clients) + 1
	last := ""
	check := func() bool {
		srv, err := c.Server.newAPIClient()
		if err != nil {
			last = err.Error()
			return false
		}
		leader, err := srv.Status().Leader()
		if err != nil || leader == "" {
			last = fmt.Sprintf("no leader yet (%v)", err)
			return false
		}
		ms, err := srv.Agent().Members(false)
		if err != nil {
			last = err.Error()
			return false
		}
		alive := 0
		for _, m := range ms {
			if m.Status == MemberAlive {
				alive++
			}
		}
		if alive < want {
			last = fmt.Sprintf("%d of %d members alive", alive, want)
			return false
		}
		for _, n := range c.Clients {
			cl, err := n.newAPIClient()
			if err != nil {
				last = err.Error()
				return false
			}
			if l, err := cl.Status().Leader(); err != nil || l == "" {
				last = fmt.Sprintf("%s does not know the leader yet (%v)", n.Name, err)
				return false
			}
		}
		return true
	}
	for !check() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// tailFrom returns the last `lines` lines of the file at path, from byte offset off on.
func tailFrom(path string, off int64, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if off > 0 && off <= int64(len(b)) {
		b = b[off:]
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
