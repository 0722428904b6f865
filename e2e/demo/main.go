// Command demo is `make demo`: a local Bedrock cluster that shows a failover. When it finds a
// Nomad binary ($NOMAD_BIN, `nomad` on PATH, or the Nomad 1.6.5 build in shared/tools beside
// the repository) everything is real: a Nomad server and 4 client agents, each with its own
// Consul client agent, the plugin launched by each client from its plugin_dir, the Docker
// engine; the job is submitted through Nomad's API. Without one (or with -harness),
// plugin/harness plays 3 Nomad clients and the demo reads the jobspec in the server's place.
// It deploys jobspecs/demo.nomad.hcl, writes through the master found via Consul, kills the
// master, shows the promotion and the failover time, checks every acknowledged write, and
// brings the lost instance back as a clone. Everything it started is removed on exit or Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/cluster"
	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/nomad"
	"github.com/bedrock-nomad/nomad-driver-bedrock/jobspecs"
	"github.com/bedrock-nomad/nomad-driver-bedrock/status"
)

func main() {
	fault := flag.String("fault", string(cluster.KillSyncer), "how the master dies: "+faultNames())
	keep := flag.Bool("keep", false, "keep the cluster running after the failover until Ctrl-C")
	verbose := flag.Bool("v", false, "print the cluster's own progress lines")
	harness := flag.Bool("harness", false, "use plugin/harness in Nomad's place even when a Nomad binary is found")
	flag.Parse()
	f := cluster.Fault(*fault)
	if _, ok := what[f]; !ok {
		fmt.Fprintf(os.Stderr, "demo: -fault %q: choose one of %s\n", *fault, faultNames())
		os.Exit(2)
	}
	log := io.Discard
	if *verbose {
		log = os.Stderr
	}
	os.Exit(cluster.RunProgram("demo", log, func(ctx context.Context, t testing.TB) error {
		return demo(ctx, t, f, *keep, *harness)
	}))
}

func faultNames() string {
	var s []string
	for _, f := range cluster.Faults {
		s = append(s, string(f))
	}
	return strings.Join(s, ", ")
}

var what = map[cluster.Fault]string{
	cluster.KillSyncer:   "kill -9 of the master's syncer (the process holding the Consul lock)",
	cluster.KillApp:      "kill -9 of the master's app container (the task fails for good)",
	cluster.FreezeSyncer: "SIGSTOP of the master's syncer, beyond the session TTL",
	cluster.NodeLoss:     "loss of the master's whole node (its Consul agent, plugin, syncer and app at once)",
	cluster.Graceful:     "a graceful stop of the master's allocation (nomad alloc stop)",
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func demo(ctx context.Context, t testing.TB, fault cluster.Fault, keep, harness bool) error {
	js, err := cluster.ParseJobspec("jobspecs/demo.nomad.hcl", jobspecs.Demo())
	if err != nil {
		return err
	}
	// The shipped jobspec leaves syncer.mode to the driver's default: async, the app's writes
	// captured through the FUSE mount.
	opts := cluster.Options{Jobspec: js, ImageAliases: []string{"bedrock-demo:latest"}, Mode: "async"}
	bin, nerr := nomad.Binary()
	switch {
	case harness:
		step("-harness: plugin/harness plays the 3 Nomad clients, driving the plugin exactly as Nomad does")
	case nerr != nil:
		step("no Nomad binary found (%v): plugin/harness plays the 3 Nomad clients, driving the plugin exactly as Nomad does", nerr)
	default:
		opts.Nomad, opts.JobspecHCL = true, string(jobspecs.Demo())
		step("real Nomad: %s", bin)
	}
	start := time.Now()
	if opts.Nomad {
		step("starting a Nomad server and 4 Nomad clients, a Consul server + 4 Consul client agents, the Docker engine")
	} else {
		step("starting 3 nodes: a Consul server + 3 Consul client agents, 3 bedrock plugins, the Docker engine")
	}
	c := cluster.Start(ctx, t, opts)
	fmt.Printf("    Consul UI: http://%s/ui\n", c.Consul.HTTPAddr())
	if opts.Nomad {
		fmt.Printf("    Nomad UI:  %s/ui/jobs/%s\n", c.NomadAddr, js.Job)
		step("nomad job run jobspecs/demo.nomad.hcl: group %q, %d instances, tasks %q (syncer) and %q (app)", js.Group, js.Count, js.SyncerTask, js.AppTask)
	} else {
		step("deployed job %q (jobspecs/demo.nomad.hcl): group %q, %d instances, tasks %q (syncer) and %q (app)",
			js.Job, js.Group, js.Count, js.SyncerTask, js.AppTask)
	}
	if err := watch(ctx, c, "waiting for one master and two caught-up clones", 60*time.Second, healthy); err != nil {
		return err
	}
	fmt.Printf("    up in %s\n", time.Since(start).Round(100*time.Millisecond))
	showStatus(ctx, c)
	showJobStatus(c, bin)

	service := serviceOf(js)
	cl, err := newClient(c.Consul.HTTPAddr(), service)
	if err != nil {
		return err
	}
	wctx, stopWriting := context.WithCancel(ctx)
	defer stopWriting()
	go cl.run(wctx, 50*time.Millisecond)
	step("writing a numbered file every 50 ms through the master, found in Consul as master.%s.service.consul", service)
	step("the app writes into a FUSE mount its master's syncer serves (syncer.mode \"async\", the default): the clones apply its writes in the order it made them")
	if err := sleep(ctx, 3*time.Second); err != nil {
		return err
	}
	old, term, err := c.Master(ctx)
	if err != nil || old == nil {
		return fmt.Errorf("no master before the fault: %w", err)
	}
	acks, _ := cl.snapshot()
	oldAddr := ""
	if len(acks) > 0 {
		oldAddr = acks[len(acks)-1].addr
	}
	fmt.Printf("    %d writes acknowledged by %s (%s), master at term %d\n", len(acks), old.Node.Name, oldAddr, term)

	step("fault: %s", what[fault])
	t0 := time.Now()
	if err := c.Inject(ctx, old, fault); err != nil {
		return err
	}
	var first ack
	if err := watch(ctx, c, "waiting for the promotion", 90*time.Second, func(*status.Report) bool {
		var ok bool
		first, ok = cl.firstAckAfter(t0, oldAddr)
		return ok
	}); err != nil {
		return err
	}
	failover := first.at.Sub(t0)
	m, newTerm, _ := c.Master(ctx)
	newName := "?"
	if m != nil {
		newName = m.Node.Name
	}
	step("%s is master at term %d: first write through it acknowledged %.2f s after the fault", newName, newTerm, failover.Seconds())

	step("bringing the lost instance back (as Nomad would: %s)", restoreHow(fault))
	back, err := c.Restore(ctx, old, fault)
	if err != nil {
		return err
	}
	if err := watch(ctx, c, "waiting for it to rejoin as a caught-up clone", 90*time.Second, healthy); err != nil {
		return err
	}
	if err := sleep(ctx, time.Second); err != nil {
		return err
	}
	stopWriting()
	if err := sleep(ctx, time.Second); err != nil { // the last writes replicate
		return err
	}
	showStatus(ctx, c)
	showJobStatus(c, bin)

	acks, failed := cl.snapshot()
	lost, aside := check(acks, m, back)
	fmt.Printf("    %d writes acknowledged in all (%d attempts found no master during the failover); on the new master: %d; kept in lost+found: %d; lost: %d\n",
		len(acks), failed, len(acks)-len(lost)-aside, aside, len(lost))
	for i, a := range lost {
		if i == 5 {
			fmt.Printf("    ... and %d more\n", len(lost)-5)
			break
		}
		fmt.Printf("    LOST: %s (acknowledged by %s at %s)\n", a.name, a.addr, a.at.Format("15:04:05.000"))
	}
	if keep {
		step("the cluster keeps running; Ctrl-C stops and removes everything")
		<-ctx.Done()
	}
	fmt.Printf("demo: failover in %.2f s, %d writes lost\n", failover.Seconds(), len(lost))
	if len(lost) > 0 {
		return fmt.Errorf("%d acknowledged writes lost", len(lost))
	}
	return nil
}

// check returns the acknowledged writes that are neither on the new master nor in the old
// instance's lost+found (where a former master's unreplicated writes are set aside), and the
// count of those set aside.
func check(acks []ack, master, back *cluster.Alloc) (lost []ack, aside int) {
	kept := map[string]string{}
	if back != nil {
		_ = filepath.WalkDir(back.DataFile("lost+found"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if b, rerr := os.ReadFile(p); rerr == nil { //nolint:gosec // the demo's own files
					kept[filepath.Base(p)] = string(b)
				}
			}
			return nil
		})
	}
	for _, a := range acks {
		if master != nil {
			if b, err := os.ReadFile(master.DataFile(a.name)); err == nil && string(b) == a.content {
				continue
			}
		}
		if kept[a.name] == a.content {
			aside++
			continue
		}
		lost = append(lost, a)
	}
	return lost, aside
}

// showJobStatus prints `nomad job status` of the demo job under a real Nomad.
func showJobStatus(c *cluster.Cluster, bin string) {
	if c.NomadAddr == "" {
		return
	}
	fmt.Printf("    $ nomad job status %s\n", c.Opts.Job)
	cmd := exec.Command(bin, "job", "status", "-address", c.NomadAddr, c.Opts.Job)
	out, err := cmd.CombinedOutput()
	if err != nil {
		fmt.Printf("    (nomad job status: %v)\n", err)
	}
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("    " + l)
	}
}

func restoreHow(f cluster.Fault) string {
	switch f {
	case cluster.KillSyncer:
		return "the syncer task is restarted in place"
	case cluster.KillApp:
		return "the failed allocation is replaced"
	case cluster.FreezeSyncer:
		return "the frozen syncer continues (SIGCONT)"
	case cluster.NodeLoss:
		return "the node comes back with its allocation"
	}
	return "a replacement allocation is placed"
}

func serviceOf(js *cluster.Jobspec) string {
	for _, line := range strings.Split(js.SyncerConfig, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && strings.TrimSpace(k) == "service" {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return js.Job + "-" + js.Group
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func healthy(r *status.Report) bool { return r != nil && r.Verdict == status.Healthy }

// watch prints a live one-line status every 500 ms until done says so.
func watch(ctx context.Context, c *cluster.Cluster, what string, timeout time.Duration, done func(*status.Report) bool) error {
	fmt.Printf("    %s\n", what)
	start := time.Now()
	last := ""
	for {
		r, _ := status.Collect(ctx, status.Options{Job: c.Opts.Job, Group: c.Opts.Group, ConsulAddr: c.Consul.HTTPAddr(), Timeout: 2 * time.Second})
		if line := compact(r) + lastFailover(c); line != last {
			fmt.Printf("    [+%4.1fs] %s\n", time.Since(start).Seconds(), line)
			last = line
		}
		if done(r) {
			return nil
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("%s: not done within %s", what, timeout)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// compact renders a report as one line: each instance's node, role, term and lag.
func compact(r *status.Report) string {
	if r == nil || len(r.Groups) == 0 {
		return "no instance registered yet"
	}
	g := r.Groups[0]
	var parts []string
	for _, in := range g.Instances {
		s := fmt.Sprintf("%s %s", in.Node, in.Role)
		switch {
		case in.Role == status.RoleMaster:
			s += fmt.Sprintf(" (term %d)", in.Term)
		case in.LagOps != nil && in.CaughtUp:
			s += fmt.Sprintf(" lag %d", *in.LagOps)
		case !in.CaughtUp && in.Live:
			s += " syncing"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " | ") + "  → " + string(g.Verdict)
}

// lastFailover says when the lock last passed from one master to another (Consul's history).
func lastFailover(c *cluster.Cluster) string {
	hs := c.History().Holders()
	prev := ""
	var at time.Time
	var term uint64
	for _, h := range hs {
		if h.Session == "" {
			continue
		}
		if prev != "" && h.ID != prev {
			at, term = h.At, h.Term
		}
		prev = h.ID
	}
	if at.IsZero() {
		return ""
	}
	return fmt.Sprintf("  (last failover: term %d at %s)", term, at.Format("15:04:05.000"))
}

// showStatus prints what an operator's `nomad-driver-bedrock status` shows.
func showStatus(ctx context.Context, c *cluster.Cluster) {
	args := []string{"-job", c.Opts.Job, "-group", c.Opts.Group, "-consul", c.Consul.HTTPAddr()}
	if c.NomadAddr != "" {
		args = append(args, "-nomad", c.NomadAddr)
	}
	fmt.Printf("    $ nomad-driver-bedrock status %s\n", strings.Join(args, " "))
	var b strings.Builder
	status.Run(ctx, args, &b, &b)
	for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		fmt.Println("    " + l)
	}
}
