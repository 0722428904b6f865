// Package nomad runs a real Nomad cluster on this machine for the end-to-end tests: one server
// agent and several client agents, each client with its own data dir, ports, dynamic port range,
// plugin dir (holding the plugin binary under test) and Consul agent, all on loopback. It drives
// the agents as an operator would (start, SIGKILL, restart) and hands out an API client; jobs are
// submitted by the tests through github.com/hashicorp/nomad/api.
//
// The Nomad binary is never part of the repository: Binary finds it as $NOMAD_BIN, else `nomad` on
// PATH, else the MPL-2.0 build of Nomad 1.6.5 in shared/tools beside the repository.
package nomad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"
	"golang.org/x/sync/errgroup"
)

// EnvBinary names the environment variable that points at the nomad binary to use.
const EnvBinary = "NOMAD_BIN"

// sharedRel is where the project's shared tools keep a Nomad build, relative to a parent of the
// working directory.
const sharedRel = "shared/tools/nomad-1.6.5/nomad"

// PluginName is the plugin's file name in a client's plugin_dir, and its plugin block's label.
const PluginName = "nomad-driver-bedrock"

// Binary returns the nomad binary to use: $NOMAD_BIN, else `nomad` on PATH, else
// shared/tools/nomad-1.6.5/nomad in the nearest parent directory that has one.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s is not an executable file", EnvBinary, p)
	}
	if p, err := exec.LookPath("nomad"); err == nil {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		if p := filepath.Join(dir, sharedRel); isExecutable(p) {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("no nomad binary: set %s, put nomad on PATH, or keep %s beside the repository", EnvBinary, sharedRel)
}

// Require returns the nomad binary, or skips the test when there is none; under CI (CI=true) a
// missing binary fails the test instead, since CI must run the real-Nomad suites.
func Require(t testing.TB) string {
	t.Helper()
	p, err := Binary()
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test runs under a real Nomad agent: %v", err)
	}
	t.Skipf("this test runs under a real Nomad agent: %v (skipped outside CI)", err)
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// ClientOptions shape one client agent.
type ClientOptions struct {
	// ConsulAddr is host:port of the node's own Consul agent (Nomad's consul block, and
	// meta.consul_http for jobs that want to reach it).
	ConsulAddr string
	// PluginConfig is the body of the plugin's config block (HCL); a nomad block with the
	// server's address is added (the placement policy reads the live job from it).
	PluginConfig string
	// Meta is extra client metadata.
	Meta map[string]string
}

// Options shape a cluster.
type Options struct {
	// Binary is the nomad binary (default: Binary()).
	Binary string
	// Plugin is the plugin binary copied into every client's plugin_dir.
	Plugin string
	// Clients, one per client agent.
	Clients []ClientOptions
	// Logf receives progress lines (default t.Logf).
	Logf func(format string, args ...any)
}

// Cluster is a running Nomad server and its clients.
type Cluster struct {
	// Server is the server agent.
	Server *Agent
	// Clients are the client agents, in the order of Options.Clients.
	Clients []*Agent
	// Binary is the nomad binary in use.
	Binary string

	t         testing.TB
	opts      Options
	dir       string
	api       *api.Client
	serverRPC int
}

// Agent is one Nomad agent process.
type Agent struct {
	// Name is the agent's (and for clients the node's) name: "server", "client-1", ...
	Name string
	// Index is the client's 0-based index (-1 for the server).
	Index int
	// HTTPAddr is the agent's HTTP API address (host:port).
	HTTPAddr string
	// DataDir is the agent's data_dir; a client's allocations live in DataDir/alloc/<id>.
	DataDir string
	// PluginDir is a client's plugin_dir.
	PluginDir string
	// LogPath receives the agent's output.
	LogPath string
	// NodeID is a client's node id, known once it registered.
	NodeID string

	config string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts the server and the clients, waits until every client node is ready with the
// plugin's driver healthy, and registers the shutdown with t.Cleanup. It calls t.Fatal on error.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Binary == "" {
		opts.Binary = Require(t)
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c := &Cluster{Binary: opts.Binary, t: t, opts: opts, dir: t.TempDir()}
	t.Cleanup(c.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	srv, err := c.newServer()
	if err != nil {
		t.Fatalf("nomad: %v", err)
	}
	c.Server = srv
	if err := c.spawn(ctx, srv); err != nil {
		t.Fatalf("nomad: start server: %v", err)
	}
	cfg := api.DefaultConfig()
	cfg.Address = "http://" + srv.HTTPAddr
	if c.api, err = api.NewClient(cfg); err != nil {
		t.Fatalf("nomad: api client: %v", err)
	}
	if err := c.waitLeader(ctx); err != nil {
		t.Fatalf("nomad: %v", err)
	}
	for i, co := range opts.Clients {
		a, err := c.newClient(i, co)
		if err != nil {
			t.Fatalf("nomad: %v", err)
		}
		c.Clients = append(c.Clients, a)
	}
	var g errgroup.Group // the clients side by side
	for _, a := range c.Clients {
		g.Go(func() error { return c.spawn(ctx, a) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("nomad: start clients: %v", err)
	}
	for _, a := range c.Clients {
		if err := c.WaitNodeReady(ctx, a); err != nil {
			t.Fatalf("nomad: %v", err)
		}
	}
	c.opts.Logf("nomad: server at http://%s, %d clients ready (driver bedrock healthy)", srv.HTTPAddr, len(c.Clients))
	return c
}

// API is a client of the server's HTTP API.
func (c *Cluster) API() *api.Client { return c.api }

// Address is the server's HTTP address as a URL (NOMAD_ADDR).
func (c *Cluster) Address() string { return "http://" + c.Server.HTTPAddr }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil //nolint:forcetypeassert // a TCP listener
}

func freePorts(n int) ([]int, error) {
	out := make([]int, 0, n)
	for range n {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// common is the part of every agent's configuration that puts it on loopback.
func common(name, dataDir string, ports []int) string {
	return fmt.Sprintf(`name      = %q
data_dir  = %q
bind_addr = "127.0.0.1"
log_level = "INFO"
disable_update_check = true
ports {
  http = %d
  rpc  = %d
  serf = %d
}
advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}
`, name, dataDir, ports[0], ports[1], ports[2])
}

func (c *Cluster) newServer() (*Agent, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	a := &Agent{Name: "server", Index: -1, HTTPAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), DataDir: filepath.Join(c.dir, "server")}
	// Short heartbeats so that a lost node's allocations are replaced within seconds (the
	// failover itself never waits for Nomad: Consul's session ends it).
	a.config = common(a.Name, a.DataDir, ports) + `server {
  enabled          = true
  bootstrap_expect = 1
  heartbeat_grace  = "3s"
  min_heartbeat_ttl = "3s"
}
client {
  enabled = false
}
consul {
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}
`
	c.serverRPC = ports[1]
	return a, nil
}

func (c *Cluster) newClient(i int, co ClientOptions) (*Agent, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("client-%d", i+1)
	a := &Agent{Name: name, Index: i, HTTPAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), DataDir: filepath.Join(c.dir, name)}
	a.PluginDir = filepath.Join(c.dir, name+"-plugins")
	if err := os.MkdirAll(a.PluginDir, 0o755); err != nil { //nolint:gosec // a plugin dir
		return nil, fmt.Errorf("plugin dir: %w", err)
	}
	// A copy per client, so that a client's plugin processes are told apart by their executable.
	if err := copyFile(c.opts.Plugin, filepath.Join(a.PluginDir, PluginName)); err != nil {
		return nil, err
	}
	meta := map[string]string{}
	for k, v := range co.Meta {
		meta[k] = v
	}
	if co.ConsulAddr != "" {
		meta["consul_http"] = co.ConsulAddr
	}
	var mb strings.Builder
	for k, v := range meta {
		fmt.Fprintf(&mb, "    %q = %q\n", k, v)
	}
	// Every client has a dynamic port range of its own: they all sit on 127.0.0.1, and a port
	// one client hands out must not be one another client hands out too. Nomad's own drivers
	// are left out: the only driver on these nodes is the plugin under test.
	lo := 21000 + 1000*i
	a.config = common(name, a.DataDir, ports) + fmt.Sprintf(`plugin_dir = %q
server {
  enabled = false
}
client {
  enabled           = true
  servers           = ["127.0.0.1:%d"]
  network_interface = "lo"
  cgroup_parent     = "bedrock-e2e-%s"
  min_dynamic_port  = %d
  max_dynamic_port  = %d
  gc_interval       = "1h"
  options = {
    "driver.denylist" = "docker,exec,raw_exec,java,qemu"
  }
  meta {
%s  }
}
consul {
  address          = %q
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}
telemetry {
  publish_allocation_metrics = true
}
plugin %q {
  config {
%s
    nomad {
      address = %q
    }
  }
}
`, a.PluginDir, c.serverRPC, name, lo, lo+999, mb.String(), co.ConsulAddr, PluginName, co.PluginConfig, c.Address())
	return a, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	defer func() { _ = in.Close() }()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755) //nolint:gosec // an executable
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return fmt.Errorf("plugin binary: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	return nil
}

// spawn starts a's process and waits until its HTTP API answers.
func (c *Cluster) spawn(ctx context.Context, a *Agent) error {
	if err := os.MkdirAll(a.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	cfgPath := filepath.Join(c.dir, a.Name+".hcl")
	if err := os.WriteFile(cfgPath, []byte(a.config), 0o600); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if a.LogPath == "" {
		a.LogPath = filepath.Join(c.dir, a.Name+".log")
	}
	logf, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	defer func() { _ = logf.Close() }()
	start, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(c.Binary, "agent", "-config", cfgPath)
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// A process group of its own: a node loss kills the agent and its plugins together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.Binary, err)
	}
	done := make(chan struct{})
	a.mu.Lock()
	a.cmd, a.done = cmd, done
	a.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	cfg := api.DefaultConfig()
	cfg.Address = "http://" + a.HTTPAddr
	cl, err := api.NewClient(cfg)
	if err != nil {
		return fmt.Errorf("api client: %w", err)
	}
	for {
		if _, err := cl.Agent().Self(); err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited during start (%v): %s", a.Name, cmd.ProcessState, tailFrom(a.LogPath, start, 20))
		case <-ctx.Done():
			a.kill(syscall.SIGKILL, true)
			return fmt.Errorf("%s: HTTP API on %s did not answer: %w: %s", a.Name, a.HTTPAddr, ctx.Err(), tailFrom(a.LogPath, start, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) waitLeader(ctx context.Context) error {
	for {
		if l, err := c.api.Status().Leader(); err == nil && l != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no server leader: %w: %s", ctx.Err(), tailFrom(c.Server.LogPath, 0, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitNodeReady waits until a's node is registered, ready, and its bedrock driver detected and
// healthy; it records the node id.
func (c *Cluster) WaitNodeReady(ctx context.Context, a *Agent) error {
	var last string
	for {
		nodes, _, err := c.api.Nodes().List((&api.QueryOptions{}).WithContext(ctx))
		if err == nil {
			for _, n := range nodes {
				if n.Name != a.Name {
					continue
				}
				a.mu.Lock()
				a.NodeID = n.ID
				a.mu.Unlock()
				d := n.Drivers["bedrock"]
				switch {
				case n.Status != "ready":
					last = "node status " + n.Status
				case d == nil || !d.Detected || !d.Healthy:
					last = fmt.Sprintf("driver bedrock not healthy: %+v", d)
				default:
					return nil
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready (%s): %w: %s", a.Name, last, ctx.Err(), tailFrom(a.LogPath, 0, 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Running tells whether a's process runs.
func (a *Agent) Running() bool {
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// kill signals a's process (or its whole process group: the agent and the plugins it started)
// and, for SIGKILL, waits (bounded) until it has been reaped.
func (a *Agent) kill(sig syscall.Signal, group bool) {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	if group {
		_ = syscall.Kill(-cmd.Process.Pid, sig)
	}
	_ = cmd.Process.Signal(sig)
	if sig != syscall.SIGKILL {
		return
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

// KillClient SIGKILLs client i. With plugins set its plugins die with it (a lost node: they share
// its process group); without, they live on and the restarted agent re-attaches to them (an agent
// crash). Containers are left alone: they belong to the Docker engine.
func (c *Cluster) KillClient(i int, plugins bool) {
	a := c.Clients[i]
	if plugins {
		for _, pid := range c.PluginPids(i) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	a.kill(syscall.SIGKILL, plugins)
}

// RestartClient starts client i again (same data dir, ports and node id) after KillClient and
// waits until its node is ready again.
func (c *Cluster) RestartClient(ctx context.Context, i int) error {
	a := c.Clients[i]
	if a.Running() {
		return fmt.Errorf("%s is still running", a.Name)
	}
	if err := c.spawn(ctx, a); err != nil {
		return err
	}
	return c.WaitNodeReady(ctx, a)
}

// PluginPids lists the live plugin processes of client i (by their executable, the client's own
// copy of the plugin).
func (c *Cluster) PluginPids(i int) []int {
	want := filepath.Join(c.Clients[i].PluginDir, PluginName)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || strings.TrimSuffix(exe, " (deleted)") != want {
			continue
		}
		// the plugin's own detached helpers (log followers) run the same binary: only processes
		// started by the agent serve the plugin protocol
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), "\x00") && len(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")) > 1 {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// Stop kills every agent and its plugins (SIGKILL to each process group) and waits, bounded,
// until they are gone. Start registers it with t.Cleanup; calling it again is harmless. On a
// failed test it logs the tail of each agent's log.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, a := range append([]*Agent{c.Server}, c.Clients...) {
		if a == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.kill(syscall.SIGKILL, true)
		}()
	}
	wg.Wait()
	for i := range c.Clients {
		for _, pid := range c.PluginPids(i) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// Nomad mounts a tmpfs on every task's secrets dir; a killed client leaves them behind.
	if err := unmountUnder(c.dir); err != nil {
		c.t.Logf("nomad: %v", err)
	}
	if c.t.Failed() {
		for _, a := range append([]*Agent{c.Server}, c.Clients...) {
			if a != nil && a.LogPath != "" {
				c.t.Logf("nomad: last lines of %s's log:\n%s", a.Name, tailFrom(a.LogPath, 0, 40))
			}
		}
	}
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("reading mounts: %w", err)
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// AllocDir is where client i keeps allocation id's directory.
func (c *Cluster) AllocDir(i int, id string) string {
	return filepath.Join(c.Clients[i].DataDir, "alloc", id)
}

// ClientOf returns the index of the client whose node id is nodeID, or -1.
func (c *Cluster) ClientOf(nodeID string) int {
	for i, a := range c.Clients {
		a.mu.Lock()
		id := a.NodeID
		a.mu.Unlock()
		if id == nodeID {
			return i
		}
	}
	return -1
}

// Logs returns the tail of agent a's log (for failure messages).
func (a *Agent) Logs(lines int) string { return tailFrom(a.LogPath, 0, lines) }

func tailFrom(path string, off int64, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if off > 0 && off <= int64(len(b)) {
		b = b[off:]
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
