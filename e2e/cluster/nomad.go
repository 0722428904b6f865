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
	"syscall"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/nomad"
)

// Under a real Nomad (Options.Nomad) the cluster does nothing in Nomad's place: a Nomad server
// and one client agent per node run the job, the plugin is launched by each client from its
// plugin_dir, and restarts, reschedules, contexts, hook order and GC are Nomad's own. The
// cluster only submits the job, injects the faults (Docker signals, killed agents, Consul
// partitions) and reads what happened: allocations and task events from Nomad's API, writes
// from the allocation directories.

// nomadBackend is the real-Nomad side of a Cluster.
type nomadBackend struct {
	c     *Cluster
	agent *nomad.Cluster

	mu     sync.Mutex
	allocs map[string]*Alloc // by allocation id, so that an allocation is one *Alloc for good
	stubs  map[string]*nomadapi.AllocationListStub
	read   time.Time
	// faultTask is the task of the faulty allocation the fault killed ("" when none) and
	// restartsBefore its restart count before (noteRestarts).
	faultTask      string
	restartsBefore uint64
}

// writerJob is the built-in writer group as a jobspec: Nomad's default restart block (the
// failover must not depend on it), a quick reschedule so the group is whole again soon after a
// node loss, and an app that reaches its node's Consul agent through the client's metadata.
const writerJob = `job %[1]q {
  datacenters = ["*"]

  group %[2]q {
    count = %[3]d

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    reschedule {
      delay          = "5s"
      delay_function = "constant"
      unlimited      = true
    }

    network {
      port "sync" {}
      port "http" {}
    }

    task "syncer" {
      driver = "bedrock"
      lifecycle {
        hook    = "prestart"
        sidecar = true
      }
      config {
        syncer {
          port   = "sync"
          secret = %[4]q
          tags   = ["traefik.enable=true"]%[5]s
        }
      }
      resources {
        cpu    = 100
        memory = 128
      }
    }

    task "app" {
      driver = "bedrock"
      config {
        image        = %[6]q
        network_mode = "host"
        data         = "/data"
        args         = ["/testapp", %[9]q, "-consul", "${meta.consul_http}", "-key", %[7]q, "-id", "${NOMAD_SHORT_ALLOC_ID}", "-every", %[8]q%[10]s]
      }
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
`

// startNomad starts the Nomad agents and submits the job; c.Consul, c.image and c.plugin are set.
func (c *Cluster) startNomad(ctx context.Context) error {
	b := &nomadBackend{c: c, allocs: map[string]*Alloc{}}
	c.nomad = b
	var clients []nomad.ClientOptions
	for i := 0; i < c.Opts.Nodes; i++ {
		n := &Node{C: c, Index: i, Name: fmt.Sprintf("client-%d", i+1), IP: "127.0.0.1"}
		c.Nodes = append(c.Nodes, n)
		clients = append(clients, nomad.ClientOptions{ConsulAddr: n.ConsulAddr(), PluginConfig: n.pluginHCL()})
	}
	b.agent = nomad.Start(c.T, nomad.Options{Plugin: c.plugin, Clients: clients, Logf: c.Opts.Logf}) //nolint:contextcheck // bounded by the helper's own start timeout, like consul.Start
	// The placement policy reads the live job from the server: every plugin gets its address.
	c.NomadAddr = b.agent.Address()
	return b.submit(ctx)
}

// submit registers the job (the built-in writer, or Options.JobspecHCL) through the API, with
// the sync secret in the Nomad variable the shipped jobspecs read.
func (b *nomadBackend) submit(ctx context.Context) error {
	c := b.c
	api := b.agent.API()
	src := c.Opts.JobspecHCL
	if src == "" {
		extra := ""
		if c.Opts.SessionTTL != "" {
			extra += fmt.Sprintf("\n          session_ttl = %q", c.Opts.SessionTTL)
		}
		if c.Opts.LockDelay != "" {
			extra += fmt.Sprintf("\n          lock_delay = %q", c.Opts.LockDelay)
		}
		extra += fmt.Sprintf("\n          mode = %q", c.Opts.mode())
		src = fmt.Sprintf(writerJob, c.Opts.Job, c.Opts.Group, c.Opts.Count, c.secret, extra, c.image, c.LeaderKey, c.Opts.WriteEvery.String(),
			c.Opts.App, c.appExtraArgs("${NOMAD_ADDR_http}"))
	}
	path := "nomad/jobs/" + c.Opts.Job
	v := &nomadapi.Variable{Path: path, Items: nomadapi.VariableItems{"sync_secret": c.secret}}
	if _, _, err := api.Variables().Create(v, (&nomadapi.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("nomad var put %s: %w", path, err)
	}
	job, err := api.Jobs().ParseHCLOpts(&nomadapi.JobsParseRequest{JobHCL: src, Canonicalize: true})
	if err != nil {
		return fmt.Errorf("parsing the job: %w", err)
	}
	c.submitted = time.Now()
	if _, _, err := api.Jobs().Register(job, (&nomadapi.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("nomad job run: %w", err)
	}
	c.Logf("nomad job run %s: submitted to %s", c.Opts.Job, b.agent.Address())
	return nil
}

// refresh reads the job's allocations (at most every 200 ms).
func (b *nomadBackend) refresh() {
	b.mu.Lock()
	fresh := time.Since(b.read) < 200*time.Millisecond
	b.mu.Unlock()
	if fresh {
		return
	}
	b.reload()
}

// reload reads the job's allocations now.
func (b *nomadBackend) reload() {
	stubs, _, err := b.agent.API().Jobs().Allocations(b.c.Opts.Job, true, nil)
	if err != nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.read = time.Now()
	b.stubs = map[string]*nomadapi.AllocationListStub{}
	for _, s := range stubs {
		b.stubs[s.ID] = s
		if b.allocs[s.ID] != nil {
			continue
		}
		i := b.agent.ClientOf(s.NodeID)
		if i < 0 {
			continue
		}
		n := b.c.Nodes[i]
		a := &Alloc{Node: n, ID: s.ID, Dir: b.agent.AllocDir(i, s.ID), done: make(chan struct{}), created: time.Unix(0, s.CreateTime)}
		b.allocs[s.ID] = a
		n.mu.Lock()
		n.allocs = append(n.allocs, a)
		sort.Slice(n.allocs, func(i, j int) bool { return n.allocs[i].created.Before(n.allocs[j].created) })
		n.mu.Unlock()
	}
}

// live tells whether the allocation is meant to run and does (or is starting).
func (b *nomadBackend) live(a *Alloc) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stubs[a.ID]
	return s != nil && s.DesiredStatus == "run" && (s.ClientStatus == "running" || s.ClientStatus == "pending")
}

// taskState is the state Nomad reports for one of a's tasks ("" when unknown).
func (b *nomadBackend) taskState(a *Alloc, task string) *nomadapi.TaskState {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.stubs[a.ID]; s != nil {
		return s.TaskStates[task]
	}
	return nil
}

// current is the node's live allocation, or nil.
func (b *nomadBackend) current(n *Node) *Alloc {
	b.refresh()
	n.mu.Lock()
	list := append([]*Alloc(nil), n.allocs...)
	n.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		if b.live(list[i]) {
			return list[i]
		}
	}
	return nil
}

// events are the task events Nomad recorded for the node's allocations (the plugin's own
// messages arrive as driver events).
func (b *nomadBackend) events(n *Node) []Event {
	b.reload()
	var out []Event
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.stubs {
		if b.agent.ClientOf(s.NodeID) != n.Index {
			continue
		}
		for task, ts := range s.TaskStates {
			for _, e := range ts.Events {
				msg := e.DisplayMessage
				if msg == "" {
					msg = e.DriverMessage
				}
				out = append(out, Event{At: time.Unix(0, e.Time), AllocID: s.ID, Task: task, Message: msg})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// syncerLogs is the tail of the syncer task's stderr as Nomad's log collector wrote it.
func (b *nomadBackend) syncerLogs(a *Alloc) string {
	files, _ := filepath.Glob(filepath.Join(a.Dir, "alloc", "logs", "syncer.stderr.*"))
	sort.Strings(files)
	if len(files) == 0 {
		return ""
	}
	data, err := os.ReadFile(files[len(files)-1])
	if err != nil {
		return err.Error()
	}
	return string(data)
}

// stop is `nomad alloc stop`: Nomad stops the allocation (its own task kill order and
// timeouts) and places a replacement.
func (b *nomadBackend) stop(ctx context.Context, a *Alloc) error {
	if _, err := b.agent.API().Allocations().Stop(&nomadapi.Allocation{ID: a.ID}, (&nomadapi.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("nomad alloc stop %s: %w", a.ID[:8], err)
	}
	return nil
}

// killNode loses the node whole: its Nomad client agent and plugins, its Consul agent and its
// allocation's containers.
func (b *nomadBackend) killNode(ctx context.Context, n *Node, a *Alloc) error {
	c := b.c
	c.Consul.KillClient(n.Index)
	b.agent.KillClient(n.Index, true)
	return errors.Join(c.signal(ctx, a, "syncer", "SIGKILL"), c.signal(ctx, a, "app", "SIGKILL"))
}

// restoreNode starts the node's Consul and Nomad agents again.
func (b *nomadBackend) restoreNode(ctx context.Context, n *Node) error {
	b.c.Consul.RestartClient(n.Index) //nolint:contextcheck // bounded by the Consul helper's own start timeout
	return b.agent.RestartClient(ctx, n.Index)
}

// crashPlugin SIGKILLs the node's plugin processes; the client launches a new plugin and
// recovers its tasks from their handles.
func (b *nomadBackend) crashPlugin(ctx context.Context, n *Node) error {
	pids := b.agent.PluginPids(n.Index)
	if len(pids) == 0 {
		return fmt.Errorf("%s: no plugin process found", n.Name)
	}
	for _, pid := range pids {
		if err := killPid(pid); err != nil {
			return err
		}
	}
	// Nomad relaunches a driver plugin when it next needs it; wait until the node reports the
	// driver healthy again with a new process.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if now := b.agent.PluginPids(n.Index); len(now) > 0 && !overlap(now, pids) {
			return b.agent.WaitNodeReady(ctx, b.agent.Clients[n.Index])
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the plugin to come back: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: Nomad did not launch the plugin again within 60s: %s", n.Name, b.agent.Clients[n.Index].Logs(20))
}

// restartAgent SIGKILLs the node's Nomad client agent alone and starts it again: the plugin
// and the tasks live on, and the new agent re-attaches to them.
func (b *nomadBackend) restartAgent(ctx context.Context, n *Node) error {
	b.agent.KillClient(n.Index, false)
	return b.agent.RestartClient(ctx, n.Index)
}

// waitReplaced waits until the job runs its full count again after a fault on a and returns
// the allocation that stands for a's instance: a itself when Nomad restarted it in place, else
// the replacement Nomad placed.
func (b *nomadBackend) waitReplaced(ctx context.Context, a *Alloc, since time.Time, timeout time.Duration) (*Alloc, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b.reload()
		var live []*Alloc
		for _, n := range b.c.Nodes {
			if cur := b.current(n); cur != nil && b.tasksRunning(cur) {
				live = append(live, cur)
			}
		}
		if len(live) >= b.c.Opts.Count {
			for _, l := range live {
				if l == a && b.restartedSince(a) {
					return a, nil
				}
			}
			var newest *Alloc
			for _, l := range live {
				if l.created.After(since) && (newest == nil || l.created.After(newest.created)) {
					newest = l
				}
			}
			if newest != nil {
				return newest, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for Nomad to replace %s: %w", a.ID[:8], ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("the job did not run %d allocations again within %s after the fault on %s: %s", b.c.Opts.Count, timeout, a.ID[:8], b.describe())
}

// noteRestarts records how often a's tasks were restarted before a fault (see restartedSince).
func (b *nomadBackend) noteRestarts(a *Alloc, task string) {
	b.reload()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.faultTask, b.restartsBefore = task, 0
	if ts := b.stubs[a.ID].TaskStates[task]; ts != nil {
		b.restartsBefore = ts.Restarts
	}
}

// restartedSince tells whether the task the fault killed in a was restarted by Nomad since
// (always true when the fault killed no task of a's).
func (b *nomadBackend) restartedSince(a *Alloc) bool {
	b.mu.Lock()
	task, before := b.faultTask, b.restartsBefore
	b.mu.Unlock()
	if task == "" {
		return true
	}
	ts := b.taskState(a, task)
	return ts != nil && ts.Restarts > before && ts.State == "running"
}

// tasksRunning tells whether both tasks of a run (to Nomad: a clone's app task runs too).
func (b *nomadBackend) tasksRunning(a *Alloc) bool {
	for _, t := range []string{"syncer", "app"} {
		ts := b.taskState(a, t)
		if ts == nil || ts.State != "running" {
			return false
		}
	}
	return true
}

// describe renders the job's allocations for failure messages.
func (b *nomadBackend) describe() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var parts []string
	for _, s := range b.stubs {
		var ts []string
		for name, st := range s.TaskStates {
			ts = append(ts, fmt.Sprintf("%s=%s(restarts %d)", name, st.State, st.Restarts))
		}
		sort.Strings(ts)
		parts = append(parts, fmt.Sprintf("%s on %s: %s/%s %s", s.ID[:8], s.NodeName, s.DesiredStatus, s.ClientStatus, strings.Join(ts, " ")))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func killPid(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	return nil
}

func overlap(a, b []int) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}
