// Command demo is `make demo`: a local 3-node Bedrock cluster that shows a failover. Everything
// is real except Nomad (no Nomad binary may be used here): a Consul server and one Consul client
// agent per node, the Docker engine, and the bedrock plugin, driven per node through
// plugin/harness exactly as a Nomad client drives it. The app is a small writer that appends a
// line stamped with its election term to its data every 20 ms; the demo kills the master, shows
// the promotion and checks that no write the clones held was lost.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/cluster"
	"github.com/bedrock-nomad/nomad-driver-bedrock/status"
)

func main() {
	fault := flag.String("fault", string(cluster.KillSyncer), "how the master dies: "+faultNames())
	keep := flag.Bool("keep", false, "keep the cluster running after the failover until Ctrl-C")
	verbose := flag.Bool("v", false, "print the cluster's own progress lines")
	flag.Parse()
	f := cluster.Fault(*fault)
	if !validFault(f) {
		fmt.Fprintf(os.Stderr, "demo: -fault %q: choose one of %s\n", *fault, faultNames())
		os.Exit(2)
	}
	log := io.Discard
	if *verbose {
		log = os.Stderr
	}
	os.Exit(cluster.RunProgram("demo", log, func(ctx context.Context, t testing.TB) error {
		return demo(ctx, t, f, *keep)
	}))
}

func faultNames() string {
	var s []string
	for _, f := range cluster.Faults {
		s = append(s, string(f))
	}
	return strings.Join(s, ", ")
}

func validFault(f cluster.Fault) bool {
	for _, g := range cluster.Faults {
		if f == g {
			return true
		}
	}
	return false
}

var what = map[cluster.Fault]string{
	cluster.KillSyncer:   "kill -9 of the master's syncer (the process holding the Consul lock)",
	cluster.KillApp:      "kill -9 of the master's app container (restart attempts = 0: the task fails for good)",
	cluster.FreezeSyncer: "SIGSTOP of the master's syncer, beyond the session TTL",
	cluster.NodeLoss:     "loss of the master's whole node (its Consul agent, plugin, syncer and app at once)",
	cluster.Graceful:     "a graceful stop of the master's allocation (nomad alloc stop)",
}

func demo(ctx context.Context, t testing.TB, fault cluster.Fault, keep bool) error {
	step := func(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }
	step("starting a 3-node cluster: Consul server + 3 client agents, 3 bedrock plugins, Docker")
	start := time.Now()
	c := cluster.Start(ctx, t, cluster.Options{Job: "demo", Group: "db"})
	fmt.Printf("    Consul UI: http://%s/ui   (key %s)\n", c.Consul.HTTPAddr(), c.LeaderKey)
	m, term, err := c.Master(ctx)
	if err != nil || m == nil {
		return fmt.Errorf("no master after start: %w", err)
	}
	step("up in %s: %s is master at term %d, the others are clones", time.Since(start).Round(100*time.Millisecond), m.Node.Name, term)
	waitHealthy(ctx, c)
	showStatus(ctx, c)

	step("the app writes a term-stamped line every 20 ms; letting it run 3 s")
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(3 * time.Second):
	}
	for _, n := range c.Nodes {
		a := n.Current()
		ws, _ := cluster.ReadWrites(a.DataFile("writes.log"))
		role := "clone "
		if a == m {
			role = "master"
		}
		fmt.Printf("    %s %s: %d lines in its copy of the data\n", n.Name, role, len(ws))
	}

	step("fault: %s", what[fault])
	r, err := c.Run(ctx, fault)
	if err != nil {
		return err
	}
	step("%s (term %d) took over; the old master's node is back as a clone", r.New.Node.Name, r.NewTerm)
	if r.SetAside > 0 {
		fmt.Printf("    %d line(s) the old master wrote after its last replicated position were moved to its lost+found, not deleted\n", r.SetAside)
	}
	waitHealthy(ctx, c)
	showStatus(ctx, c)
	for _, s := range r.SplitBrain {
		fmt.Println("    TWO MASTERS:", s)
	}
	lost := r.LostWrites + r.NotSetAside
	fmt.Printf("    checked: %d lines the clones held at the fault are all on the new master; two masters at once: %d\n", r.ClonesHeldAtFault, len(r.SplitBrain))
	if keep {
		step("the cluster keeps running; Ctrl-C to stop and clean up")
		<-ctx.Done()
	}
	fmt.Printf("demo: failover in %.2f s, %d writes lost\n", r.Failover.Seconds(), lost)
	if lost > 0 || len(r.SplitBrain) > 0 {
		return fmt.Errorf("invariants broken: %d writes lost, %d overlaps", lost, len(r.SplitBrain))
	}
	return nil
}

// waitHealthy gives the group up to 30 s to be healthy (one master, two caught-up clones), so
// that the status shown is the settled one.
func waitHealthy(ctx context.Context, c *cluster.Cluster) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r, err := status.Collect(ctx, status.Options{Job: c.Opts.Job, Group: c.Opts.Group, ConsulAddr: c.Consul.HTTPAddr(), Timeout: 2 * time.Second})
		if err == nil && r.Verdict == status.Healthy {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// showStatus prints what an operator's `nomad-driver-bedrock status` shows.
func showStatus(ctx context.Context, c *cluster.Cluster) {
	args := []string{"-job", c.Opts.Job, "-group", c.Opts.Group, "-consul", c.Consul.HTTPAddr()}
	fmt.Printf("    $ nomad-driver-bedrock status %s\n", strings.Join(args, " "))
	var b strings.Builder
	status.Run(ctx, args, &b, &b)
	for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		fmt.Println("    " + l)
	}
}
