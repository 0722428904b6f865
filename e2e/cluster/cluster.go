// Package cluster runs a whole Bedrock group on one machine with real parts: a Consul dev
// server plus one Consul client agent per node (internal/testutil/consul), the real Docker
// engine, and per node one allocation of a group with a syncer task and an app task. Nomad is
// either real (Options.Nomad: a Nomad server and one client agent per node, see nomad.go) or
// played by this package through plugin/harness, one plugin per node. The app is the test
// image's writer (or its SQLite workload), which stamps every write with the term it saw, so
// that faults can be injected and the invariants checked from the writes themselves.
//
// In the harness mode this package does what Nomad would: it restarts a syncer task that died
// (restart block, destroying the exited handle first as Nomad's task runner does), stops the
// allocation's sidecar when its main task failed for good (Nomad kills sidecars once the main
// tasks are dead) and places a replacement allocation.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/testimage"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// Options shape a cluster.
type Options struct {
	// Nodes is the number of nodes (default 3).
	Nodes int
	// Job and Group name the group (defaults "writer", "db").
	Job, Group string
	// SessionTTL and LockDelay are the syncer block's settings ("" = Bedrock's defaults).
	SessionTTL, LockDelay string
	// WriteEvery is the writer's pace (default 20ms).
	WriteEvery time.Duration
	// RestartDelay is the restart block's delay for a failed syncer task (default 1s).
	RestartDelay time.Duration
	// Jobspec, when set, replaces the built-in writer group: its job, group, ports and task
	// configs are used as a Nomad server would hand them to the clients.
	Jobspec *Jobspec
	// Netns runs each node's Consul agent in a network namespace of its own (internal/testutil/consul
	// WithNetns), which the Partition fault needs; the nodes' own processes stay on loopback.
	Netns bool
	// ImageAliases are extra tags given to the locally built test image before anything
	// starts (e.g. the demo jobspec's bedrock-demo:latest).
	ImageAliases []string
	// PlainConsulLock turns off the driver's release of a dead syncer's lock, leaving
	// failover to Consul's timers alone (the yard-stick).
	PlainConsulLock bool
	// Logf receives progress lines (default: t.Logf).
	Logf func(format string, args ...any)
	// Nomad runs the group under a real Nomad agent (e2e/nomad): a server and one client agent
	// per node, the job submitted through Nomad's API. Nodes then counts Nomad clients (default
	// 4: a spare for replacements) and Count the group's instances (default 3).
	Nomad bool
	// WALAutocheckpoint, for AppSQLite, checkpoints the WAL into the database every so many
	// pages (0: SQLite's default, 1000): a small value is a checkpoint-heavy load.
	WALAutocheckpoint int
	// App is the workload: AppWriter (default), AppSQLite or AppLedger.
	App string
	// StockConsul runs the Consul server with no extra configuration (its session_ttl_min
	// stays 10s) instead of session_ttl_min = "1s".
	StockConsul bool
	// Count is the group's count under Nomad.
	Count int
	// JobspecHCL, under Nomad, is the job to submit instead of the built-in writer.
	JobspecHCL string
	// Mode is the syncer block's mode: "" or "watch" (the watcher's stream, which the failover
	// suites were built on; the cluster writes it out, as the driver's default is async),
	// "async" or "sync" (the app writes through the capture mount; each instance's copy is
	// then the syncer's local/data). With a Jobspec, Mode says what its syncer block asks for.
	Mode string
}

// mode is the mode the cluster's own jobspecs ask for.
func (o Options) mode() string {
	if o.Mode == "" {
		return "watch"
	}
	return o.Mode
}

// capture tells whether the group runs in a capture mode.
func (o Options) capture() bool { return o.Mode == "async" || o.Mode == "sync" }

// Cluster is a running group; see Start.
type Cluster struct {
	T      testing.TB
	Opts   Options
	Consul *consul.Cluster
	Nodes  []*Node
	Docker *client.Client
	// LeaderKey is the group's lock key.
	LeaderKey string

	// NomadAddr is the Nomad server's HTTP address (Options.Nomad).
	NomadAddr string
	// FirstMaster is, under Nomad, the time from `nomad job run` to the first master's app
	// writing.
	FirstMaster time.Duration
	submitted   time.Time

	image, plugin, secret string
	history               *History
	nomad                 *nomadBackend
	faultAt               time.Time
	ctx                   context.Context
	cancel                context.CancelFunc
}

// Node is one Nomad client node: its Consul agent, its plugin and its allocations.
type Node struct {
	C     *Cluster
	Index int
	Name  string
	// IP is the node's loopback address, where its syncer and app ports are bound.
	IP    string
	Agent *harness.Client
	root  string

	mu     sync.Mutex
	allocs []*Alloc
	events []Event
}

// Event is a task event the node's plugin sent (what the Nomad UI shows).
type Event struct {
	At      time.Time
	AllocID string
	Task    string
	Message string
}

// Alloc is one allocation of the group on a node.
type Alloc struct {
	Node   *Node
	ID     string
	Dir    string
	ports  []harness.Port
	mu     sync.Mutex
	syncer *harness.Task
	app    *harness.Task
	// stopped is set once the allocation was stopped on purpose or failed for good.
	stopped bool
	done    chan struct{}
	// created orders a node's allocations under Nomad.
	created time.Time
}

// Start brings up Consul, the plugins and one allocation per node, and waits for a master.
func Start(ctx context.Context, t testing.TB, opts Options) *Cluster {
	t.Helper()
	if js := opts.Jobspec; js != nil {
		opts.Job, opts.Group = js.Job, js.Group
		if js.Count > 0 && opts.Count == 0 {
			opts.Count = js.Count
		}
	}
	if opts.Count == 0 {
		opts.Count = 3
	}
	if opts.Nodes == 0 {
		// under Nomad, one node more than the count: a spare for replacements
		opts.Nodes = opts.Count
		if opts.Nomad {
			opts.Nodes = opts.Count + 1
		}
	}
	if opts.Job == "" {
		opts.Job = "writer"
	}
	if opts.Group == "" {
		opts.Group = "db"
	}
	if opts.App == "" {
		opts.App = AppWriter
	}
	if opts.WriteEvery == 0 {
		opts.WriteEvery = 20 * time.Millisecond
		if opts.App == AppSQLite || opts.App == AppLedger {
			opts.WriteEvery = 5 * time.Millisecond
		}
	}
	if opts.RestartDelay == 0 {
		opts.RestartDelay = time.Second
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &Cluster{T: t, Opts: opts, ctx: ctx, cancel: cancel, secret: "e2e-secret-" + harness.NewAllocID()[:16]}
	c.LeaderKey = lease.KeyPrefix("", "default", opts.Job, opts.Group) + "/leader"

	copts := []consul.Option{consul.WithClients(opts.Nodes)}
	if opts.StockConsul {
		copts = append(copts, consul.WithSessionTTLMin(0))
	}
	if opts.Netns {
		copts = append(copts, consul.WithNetns())
	}
	c.Consul = consul.Start(t, copts...) //nolint:contextcheck // bounded by the helper's start timeout
	bctx, bcancel := context.WithTimeout(ctx, 5*time.Minute)
	defer bcancel()
	var err error
	if c.image, err = testimage.Build(bctx); err != nil {
		t.Fatalf("cluster: test image: %v", err)
	}
	for _, alias := range opts.ImageAliases {
		if err := tagImage(bctx, c.image, alias); err != nil {
			t.Fatalf("cluster: %v", err)
		}
	}
	if c.plugin, err = harness.BuildPlugin(); err != nil {
		t.Fatalf("cluster: plugin: %v", err)
	}
	if c.Docker, err = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation()); err != nil {
		t.Fatalf("cluster: docker: %v", err)
	}
	c.history = watchHistory(ctx, c.Consul.Client(), c.LeaderKey)
	t.Cleanup(c.stop)
	if opts.Nomad {
		if err := c.startNomad(bctx); err != nil {
			t.Fatalf("cluster: %v", err)
		}
		if opts.JobspecHCL == "" {
			s, err := c.WaitMaster(bctx, 0, 2*time.Minute)
			if err != nil {
				t.Fatalf("cluster: %v", err)
			}
			c.FirstMaster = s.At.Sub(c.submitted)
			c.Logf("first master serving %s after nomad job run", c.FirstMaster.Round(time.Millisecond))
		}
		return c
	}

	for i := 0; i < opts.Nodes; i++ {
		// the node's own processes (syncer, app) bind a loopback address of their own; the
		// Consul agent may live in a namespace (see ConsulAddr)
		n := &Node{C: c, Index: i, Name: fmt.Sprintf("node-%d", i+1), IP: fmt.Sprintf("127.0.0.%d", i+2), root: t.TempDir()}
		if err := n.startAgent(bctx); err != nil {
			t.Fatalf("cluster: %s: %v", n.Name, err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if _, err := n.StartAlloc(bctx); err != nil {
			t.Fatalf("cluster: %s: %v", n.Name, err)
		}
	}
	if opts.Jobspec == nil {
		if _, err := c.WaitMaster(bctx, 0, time.Minute); err != nil {
			t.Fatalf("cluster: %v", err)
		}
	}
	return c
}

func (c *Cluster) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if c.nomad != nil {
		c.nomad.agent.Stop()
		c.removeContainers(ctx, "com.bedrock-nomad.job="+c.Opts.Job)
		c.cancel()
		return
	}
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		for _, a := range n.Allocs() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.destroy(ctx)
			}()
		}
	}
	wg.Wait()
	for _, n := range c.Nodes {
		if n.Agent != nil {
			n.Agent.Stop(ctx)
		}
	}
	c.cancel()
}

func (n *Node) pluginHCL() string {
	gc := "gc {\n  image = false\n}\n"
	if n.C.Opts.Nomad {
		// Several clients share one Docker engine: every plugin's dangling-container reaper runs
		// every 2 s, so one that touched another node's containers would break the scenarios.
		gc = "gc {\n  image = false\n  dangling_containers {\n    period = \"2s\"\n    creation_grace = \"2s\"\n  }\n}\n"
	}
	return fmt.Sprintf("%sconsul {\n  address = %q\n  release_dead_syncer = %t\n}\n",
		gc, n.C.Consul.Clients[n.Index].HTTPAddr, !n.C.Opts.PlainConsulLock)
}

func (n *Node) startAgent(ctx context.Context) error {
	agent, err := harness.StartAgent(ctx, harness.Options{Binary: n.C.plugin}, n.pluginHCL())
	if err != nil {
		return fmt.Errorf("plugin: %w", err)
	}
	n.Agent = agent
	return n.followEvents()
}

func (n *Node) followEvents() error {
	stream, err := n.Agent.TaskEvents(n.C.ctx)
	if err != nil {
		return fmt.Errorf("task events: %w", err)
	}
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			n.mu.Lock()
			n.events = append(n.events, Event{At: ev.GetTimestamp().AsTime(), AllocID: ev.GetAllocId(), Task: ev.GetTaskName(), Message: ev.GetMessage()})
			n.mu.Unlock()
		}
	}()
	return nil
}

// CrashPlugin kills the node's plugin with SIGKILL and does what a Nomad client does next:
// (under a real Nomad, the client does it itself)
// launches a new one, configures it and recovers every task of the node's live allocations
// from their handles. Containers, syncers and their Consul sessions are expected to survive.
func (n *Node) CrashPlugin(ctx context.Context) error {
	if b := n.C.nomad; b != nil {
		return b.crashPlugin(ctx, n)
	}
	if err := n.Agent.CrashPlugin(ctx); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	if err := n.followEvents(); err != nil {
		return err
	}
	for _, a := range n.Allocs() {
		if a.isStopped() {
			continue
		}
		s, app := a.Tasks()
		for _, t := range []*harness.Task{s, app} {
			if t == nil {
				continue
			}
			if err := n.Agent.RecoverTask(ctx, t); err != nil {
				return fmt.Errorf("%s: recovering %s: %w", n.Name, t.ID(), err)
			}
		}
		go a.superviseSyncer(s) //nolint:contextcheck // supervision lives as long as the cluster, not this call
		go a.superviseApp(app)  //nolint:contextcheck // supervision lives as long as the cluster, not this call
	}
	return nil
}

// RestartAgent kills the node's Nomad client agent with SIGKILL and starts it again: the
// plugin, the containers and the syncer's session live on, and the new agent re-attaches to
// the plugin and recovers its tasks. Real Nomad only.
func (n *Node) RestartAgent(ctx context.Context) error {
	if n.C.nomad == nil {
		return errors.New("restarting the client agent needs a real Nomad (Options.Nomad)")
	}
	return n.C.nomad.restartAgent(ctx, n)
}

// Events returns the task events the node's plugins sent so far.
func (n *Node) Events() []Event {
	if b := n.C.nomad; b != nil {
		return b.events(n)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Event(nil), n.events...)
}

// EventsMatching returns the events of any node whose message contains s.
func (c *Cluster) EventsMatching(s string) []Event {
	var out []Event
	for _, n := range c.Nodes {
		for _, e := range n.Events() {
			if strings.Contains(e.Message, s) {
				out = append(out, e)
			}
		}
	}
	return out
}

// WaitEvent waits up to timeout for a task event of any node whose message contains s.
func (c *Cluster) WaitEvent(ctx context.Context, s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if len(c.EventsMatching(s)) > 0 {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ConsulAddr is the node's Consul agent HTTP address.
func (n *Node) ConsulAddr() string { return n.C.Consul.Clients[n.Index].HTTPAddr }

// Allocs returns the node's allocations, oldest first.
func (n *Node) Allocs() []*Alloc {
	if b := n.C.nomad; b != nil {
		b.refresh()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Alloc(nil), n.allocs...)
}

// Current is the node's newest allocation (under Nomad: its live one), or nil.
func (n *Node) Current() *Alloc {
	if b := n.C.nomad; b != nil {
		return b.current(n)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.allocs) == 0 {
		return nil
	}
	return n.allocs[len(n.allocs)-1]
}

// StartAlloc places a new allocation of the group on the node (a fresh alloc dir: the
// replacement Nomad schedules) and starts its syncer and app tasks.
func (n *Node) StartAlloc(ctx context.Context) (*Alloc, error) {
	id := harness.NewAllocID()
	a := &Alloc{Node: n, ID: id, Dir: filepath.Join(n.root, "alloc", id), done: make(chan struct{})}
	ports := []harness.Port{{Label: "sync"}, {Label: "http"}}
	if js := n.C.Opts.Jobspec; js != nil {
		ports = js.Ports
	}
	for _, p := range ports {
		v, err := harness.FreePort(n.IP)
		if err != nil {
			return nil, fmt.Errorf("port: %w", err)
		}
		p.Value, p.HostIP = v, n.IP
		a.ports = append(a.ports, p)
	}
	n.mu.Lock()
	n.allocs = append(n.allocs, a)
	n.mu.Unlock()
	if err := a.startSyncer(ctx); err != nil {
		return nil, err
	}
	if err := a.startApp(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Alloc) spec(task, cfg string) harness.TaskSpec {
	c := a.Node.C
	s := harness.TaskSpec{Job: c.Opts.Job, Group: c.Opts.Group, Task: task, AllocID: a.ID, Ports: a.ports,
		NodeName: a.Node.Name, NodeID: "node-id-" + a.Node.Name, Config: cfg, MemoryMB: 128}
	if js := c.Opts.Jobspec; js != nil {
		switch task {
		case "syncer":
			s.Task = js.SyncerTask
			if js.SyncerUsesSecretFromEnv {
				// what the jobspec's template renders from the Nomad variable
				s.Env = map[string]string{"BEDROCK_SYNC_SECRET": c.secret}
			}
		case "app":
			s.Task = js.AppTask
		}
	}
	return s
}

func (a *Alloc) startSyncer(ctx context.Context) error {
	c := a.Node.C
	extra := ""
	if c.Opts.SessionTTL != "" {
		extra += fmt.Sprintf("\n  session_ttl = %q", c.Opts.SessionTTL)
	}
	if c.Opts.LockDelay != "" {
		extra += fmt.Sprintf("\n  lock_delay = %q", c.Opts.LockDelay)
	}
	extra += fmt.Sprintf("\n  mode = %q", c.Opts.mode())
	cfg := fmt.Sprintf("syncer {\n  port = \"sync\"\n  secret = %q\n  tags = [\"traefik.enable=true\"]%s\n}\n", c.secret, extra)
	if js := c.Opts.Jobspec; js != nil {
		cfg = js.SyncerConfig
	}
	t, err := a.Node.Agent.PrepareTask(a.Node.root, a.spec("syncer", cfg))
	if err != nil {
		return fmt.Errorf("syncer task: %w", err)
	}
	if err := a.Node.Agent.StartTask(ctx, t); err != nil {
		t.Logs.Close()
		return fmt.Errorf("syncer task: %w", err)
	}
	a.mu.Lock()
	a.syncer = t
	a.mu.Unlock()
	go a.superviseSyncer(t) //nolint:contextcheck // supervision lives as long as the cluster, not this call
	return nil
}

func (a *Alloc) startApp(ctx context.Context) error {
	c := a.Node.C
	var cfg string
	if js := c.Opts.Jobspec; js != nil {
		cfg = js.AppConfig
	} else {
		http := a.ports[1]
		cfg = fmt.Sprintf(`image = %q
network_mode = "host"
data = "/data"
args = ["/testapp", %q, "-consul", %q, "-key", %q, "-id", %q, "-every", %q%s]
`, c.image, c.Opts.App, a.Node.ConsulAddr(), c.LeaderKey, a.ID[:8], c.Opts.WriteEvery.String(), c.appExtraArgs(fmt.Sprintf("%s:%d", http.HostIP, http.Value)))
	}
	t, err := a.Node.Agent.PrepareTask(a.Node.root, a.spec("app", cfg))
	if err != nil {
		return fmt.Errorf("app task: %w", err)
	}
	if err := a.Node.Agent.StartTask(ctx, t); err != nil {
		t.Logs.Close()
		return fmt.Errorf("app task: %w", err)
	}
	a.mu.Lock()
	a.app = t
	a.mu.Unlock()
	go a.superviseApp(t) //nolint:contextcheck // supervision lives as long as the cluster, not this call
	return nil
}

// superviseSyncer plays Nomad's restart block for the sidecar: a syncer that exits while the
// allocation lives is started again in place (same alloc dir, so same data) after RestartDelay.
func (a *Alloc) superviseSyncer(t *harness.Task) {
	c := a.Node.C
	res, err := a.Node.Agent.WaitTask(c.ctx, t)
	if c.ctx.Err() != nil || a.isStopped() {
		return
	}
	if err != nil {
		// the plugin went away (node loss); whoever restores the node restarts the tasks
		return
	}
	c.Opts.Logf("%s: syncer task of %s exited (code %d, signal %d); restarting it in %s", a.Node.Name, a.ID[:8], res.ExitCode, res.Signal, c.Opts.RestartDelay)
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Minute)
	defer cancel()
	// As Nomad's task runner does: the exited task's handle is destroyed at once, before the
	// restart delay (which cancels whatever the plugin still did on the handle's context).
	_ = a.Node.Agent.DestroyTask(ctx, t, true)
	t.Logs.Close()
	select {
	case <-c.ctx.Done():
		return
	case <-time.After(c.Opts.RestartDelay):
	}
	if a.isStopped() {
		return
	}
	if err := a.startSyncer(ctx); err != nil {
		c.Opts.Logf("%s: restarting the syncer of %s failed: %v", a.Node.Name, a.ID[:8], err)
	}
}

// superviseApp plays Nomad for the main task with restart attempts = 0: when the app task ends,
// the allocation's main tasks are dead, so the sidecar syncer is stopped (gracefully: it steps
// down), and a replacement allocation is placed on the same node (the only one the group's
// distinct_hosts constraint leaves free).
func (a *Alloc) superviseApp(t *harness.Task) {
	c := a.Node.C
	res, err := a.Node.Agent.WaitTask(c.ctx, t)
	if c.ctx.Err() != nil || a.isStopped() || err != nil {
		return
	}
	c.Opts.Logf("%s: app task of %s failed for good (code %d, signal %d): stopping the allocation, placing a replacement", a.Node.Name, a.ID[:8], res.ExitCode, res.Signal)
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Minute)
	defer cancel()
	a.Stop(ctx)
	if _, err := a.Node.StartAlloc(ctx); err != nil {
		c.Opts.Logf("%s: replacement allocation failed: %v", a.Node.Name, err)
	}
}

func (a *Alloc) isStopped() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopped
}

// Tasks returns the allocation's current syncer and app tasks.
func (a *Alloc) Tasks() (syncer, app *harness.Task) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.syncer, a.app
}

// Stop stops the allocation the way Nomad does: the main task first, then the sidecar with
// SIGTERM and a kill timeout (the syncer steps down and releases the lock on the way out).
func (a *Alloc) Stop(ctx context.Context) {
	if b := a.Node.C.nomad; b != nil {
		if err := b.stop(ctx, a); err != nil {
			a.Node.C.Logf("%v", err)
		}
		return
	}
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return
	}
	a.stopped = true
	s, app := a.syncer, a.app
	a.mu.Unlock()
	if app != nil {
		_ = a.Node.Agent.StopTask(ctx, app, 5*time.Second, "SIGTERM")
	}
	if s != nil {
		_ = a.Node.Agent.StopTask(ctx, s, 10*time.Second, "SIGTERM")
	}
}

func (a *Alloc) destroy(ctx context.Context) {
	a.mu.Lock()
	a.stopped = true
	s, app := a.syncer, a.app
	a.mu.Unlock()
	for _, t := range []*harness.Task{app, s} {
		if t == nil {
			continue
		}
		_ = a.Node.Agent.StopAndDestroy(ctx, t, 2*time.Second, "SIGKILL")
		t.Logs.Close()
	}
	// containers of a node whose plugin is gone
	a.Node.C.removeContainers(ctx, "com.bedrock-nomad.alloc_id="+a.ID)
}

// removeContainers force-removes the containers carrying label (key=value).
func (c *Cluster) removeContainers(ctx context.Context, label string) {
	list, err := c.Docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", label))})
	if err == nil {
		for _, ct := range list {
			_ = c.Docker.ContainerRemove(ctx, ct.ID, container.RemoveOptions{Force: true})
		}
	}
}

// ContainerOf returns the id of the allocation's container for task ("syncer" or "app").
func (a *Alloc) ContainerOf(ctx context.Context, task string) (string, error) {
	c := a.Node.C
	if js := c.Opts.Jobspec; js != nil {
		task = map[string]string{"syncer": js.SyncerTask, "app": js.AppTask}[task]
	}
	list, err := c.Docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", "com.bedrock-nomad.alloc_id="+a.ID), filters.Arg("label", "com.bedrock-nomad.task="+task))})
	if err != nil {
		return "", fmt.Errorf("listing containers: %w", err)
	}
	for _, ct := range list {
		if ct.State == "running" {
			return ct.ID, nil
		}
	}
	if len(list) > 0 {
		return list[0].ID, nil
	}
	return "", fmt.Errorf("no %s container for allocation %s", task, a.ID[:8])
}

// DataFile is the path of a file in the allocation's replicated data dir.
//
// In a capture mode that is the syncer's copy behind the mount (what a clone holds, and what
// the master's mount serves).
func (a *Alloc) DataFile(name string) string {
	if a.Node.C.Opts.capture() {
		return filepath.Join(a.Dir, "syncer", "local", "data", name)
	}
	return filepath.Join(a.Dir, "alloc", "data", name)
}

// WitnessFile is the app's record of every write, outside the data dir.
func (a *Alloc) WitnessFile() string { return filepath.Join(a.Dir, "app", "local", "witness.log") }

// SyncerLogs returns the current syncer task's stderr (for failure messages).
func (a *Alloc) SyncerLogs() string {
	if b := a.Node.C.nomad; b != nil {
		return b.syncerLogs(a)
	}
	s, _ := a.Tasks()
	if s == nil {
		return ""
	}
	return s.Logs.Stderr()
}

// Master is the allocation holding the lock now, with the term, or nil.
func (c *Cluster) Master(ctx context.Context) (*Alloc, uint64, error) {
	h, err := readHolder(ctx, c.Consul.Client(), c.LeaderKey)
	if err != nil || h.Session == "" {
		return nil, 0, err
	}
	return c.allocByID(h.ID), h.Term, nil
}

func (c *Cluster) allocByID(id string) *Alloc {
	for _, n := range c.Nodes {
		for _, a := range n.Allocs() {
			if a.ID == id {
				return a
			}
		}
	}
	return nil
}

// WaitMaster waits until an allocation serves as master at a term above after, i.e. its app
// has written a line stamped with that term, and returns the allocation, its term and the
// writer's timestamp of that first line.
func (c *Cluster) WaitMaster(ctx context.Context, after uint64, timeout time.Duration) (*Serving, error) {
	deadline := time.Now().Add(timeout)
	for {
		if s := c.firstServing(after); s != nil {
			return s, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no master serving at a term above %d within %s; holder history: %s; the apps' last words:%s", after, timeout, c.history.String(), c.appTails())
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a master: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// appTails returns the last lines each allocation's app wrote to stderr (under Nomad), so a
// failure says why no app served.
func (c *Cluster) appTails() string {
	var b strings.Builder
	for _, n := range c.Nodes {
		for _, a := range n.Allocs() {
			files, _ := filepath.Glob(filepath.Join(a.Dir, "alloc", "logs", "app.stderr.*"))
			sort.Strings(files)
			if len(files) == 0 {
				continue
			}
			data, err := os.ReadFile(files[len(files)-1])
			if err != nil || len(data) == 0 {
				continue
			}
			fmt.Fprintf(&b, "\n  %s/%s: %s", n.Name, a.ID[:8], tailLines(string(data), 3))
		}
	}
	return b.String()
}

// Serving is a master that wrote.
type Serving struct {
	Alloc *Alloc
	Term  uint64
	// At is the writer's timestamp of its first write at Term.
	At time.Time
}

func (c *Cluster) firstServing(after uint64) *Serving {
	var best *Serving
	for _, n := range c.Nodes {
		for _, a := range n.Allocs() {
			ws, _ := ReadWrites(a.WitnessFile())
			for _, w := range ws {
				if w.Term > after && (best == nil || w.At.Before(best.At)) {
					best = &Serving{Alloc: a, Term: w.Term, At: w.At}
					break
				}
			}
		}
	}
	return best
}

// History returns the lock holders seen so far.
func (c *Cluster) History() *History { return c.history }

// Logf logs through the cluster's logger.
func (c *Cluster) Logf(format string, args ...any) { c.Opts.Logf(format, args...) }

// shortAlloc renders an allocation for logs.
func shortAlloc(a *Alloc) string {
	if a == nil {
		return "<none>"
	}
	return a.Node.Name + "/" + a.ID[:8]
}

func tagImage(ctx context.Context, src, alias string) error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	defer func() { _ = cli.Close() }()
	if err := cli.ImageTag(ctx, src, alias); err != nil {
		return fmt.Errorf("tagging %s as %s: %w", src, alias, err)
	}
	return nil
}
