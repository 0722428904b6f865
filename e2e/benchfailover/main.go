// Command benchfailover measures Bedrock's failover time, fault to "new master serving" (the
// new master's app wrote its first line), over every failover scenario of e2e/cluster, each
// repeated -reps times, under a real Nomad agent by default (a server and 4 clients, each with
// its own Consul agent, real Docker, the job's restart block Nomad's default), or with
// -harness on 3 nodes driven by plugin/harness. Beside it, in the same run, the yard-stick: the same cluster with Consul's
// default lock settings (15 s session TTL as `consul lock` uses, 15 s lock-delay) and nothing
// but Consul's timers to end a dead master's lock. Every run also checks the invariants (no two
// masters, no acknowledged write lost) and the totals are printed.
//
// The last line is, exactly:
//
//	bench-failover: crash_p50_s=<x> crash_p95_s=<x> node_p50_s=<x> node_p95_s=<x> default_lock_p50_s=<x> split_brain=<n> lost_writes=<n>
//
// where crash is kill -9 of the master's syncer (the process holding the lock), node is the
// loss of the master's whole node, and default_lock is the yard-stick's crash.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/cluster"
	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/nomad"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/netns"
)

func main() {
	reps := flag.Int("reps", 20, "runs of each scenario")
	yreps := flag.Int("yardstick-reps", 0, "runs of each yard-stick scenario (default: -reps)")
	only := flag.String("scenarios", "", "comma-separated scenarios (default: all)")
	verbose := flag.Bool("v", false, "print the clusters' progress")
	harness := flag.Bool("harness", false, "drive the plugins with plugin/harness instead of a real Nomad agent")
	stock := flag.Bool("stock-consul", false, "run Bedrock's cluster on a Consul server with no extra configuration (session_ttl_min 10s)")
	flag.Parse()
	if !*harness {
		if _, err := nomad.Binary(); err != nil {
			fmt.Fprintf(os.Stderr, "bench-failover: %v\n(run with -harness to measure without Nomad)\n", err)
			os.Exit(2)
		}
	}
	if *yreps == 0 {
		*yreps = *reps
	}
	faults := cluster.Faults
	if *only != "" {
		faults = nil
		for _, f := range strings.Split(*only, ",") {
			faults = append(faults, cluster.Fault(strings.TrimSpace(f)))
		}
	}
	log := io.Discard
	if *verbose {
		log = os.Stderr
	}
	os.Exit(cluster.RunProgram("bench-failover", log, func(ctx context.Context, t testing.TB) error {
		return bench(ctx, t, faults, *reps, *yreps, !*harness, *stock)
	}))
}

// yardstickFaults are the scenarios whose failover the yard-stick's timers decide.
var yardstickFaults = []cluster.Fault{cluster.KillSyncer, cluster.NodeLoss}

type series struct {
	mu      sync.Mutex
	samples map[cluster.Fault][]time.Duration
	split   int
	lost    int
	unacct  int
	window  []int // per run: the old master's writes of the last AckWindow lost (the replication window)
	failed  []string
}

func (s *series) add(r *cluster.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples[r.Fault] = append(s.samples[r.Fault], r.Failover)
	s.split += len(r.SplitBrain)
	s.lost += r.LostWrites
	s.unacct += r.NotSetAside
	s.window = append(s.window, r.LostInWindow)
}

func bench(ctx context.Context, t testing.TB, faults []cluster.Fault, reps, yreps int, underNomad, stockConsul bool) error {
	how := "under a real Nomad agent (" + nomadVersion() + "), 4 clients each"
	if !underNomad {
		how = "plugin/harness in Nomad's place, 3 nodes each"
	}
	if stockConsul {
		how += "; Bedrock's Consul stock (session_ttl_min 10s)"
	}
	fmt.Printf("bench-failover: %d runs per scenario, yard-stick %d runs; two clusters, %s\n", reps, yreps, how)
	ours := &series{samples: map[cluster.Fault][]time.Duration{}}
	yard := &series{samples: map[cluster.Fault][]time.Duration{}}
	useNetns := netns.Available() == nil //nolint:contextcheck // bounded by the helper's own timeout
	if !useNetns {
		faults = slices.DeleteFunc(slices.Clone(faults), func(f cluster.Fault) bool { return f == cluster.Partition })
		fmt.Println("bench-failover: no network namespaces here (needs root and iproute2): the partition scenario is skipped")
	}
	c := cluster.Start(ctx, t, cluster.Options{Job: "bench", Netns: useNetns, Nomad: underNomad, StockConsul: stockConsul})
	y := cluster.Start(ctx, t, cluster.Options{Job: "yardstick", SessionTTL: "15s", LockDelay: "15s", PlainConsulLock: true, Nomad: underNomad})

	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		errs[0] = runAll(ctx, c, "bedrock", faults, reps, ours)
	}()
	go func() {
		defer wg.Done()
		var yf []cluster.Fault
		for _, f := range faults {
			for _, g := range yardstickFaults {
				if f == g {
					yf = append(yf, f)
				}
			}
		}
		errs[1] = runAll(ctx, y, "yard-stick", yf, yreps, yard)
	}()
	wg.Wait()

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\truns\tp50 s\tp95 s\tmax s\tyard-stick runs\tp50 s\tp95 s\tratio p50\t")
	for _, f := range faults {
		o := ours.samples[f]
		ys := yard.samples[f]
		line := fmt.Sprintf("%s\t%d\t%.2f\t%.2f\t%.2f\t", f, len(o), pct(o, 50), pct(o, 95), pct(o, 100))
		if len(ys) > 0 {
			line += fmt.Sprintf("%d\t%.2f\t%.2f\t%.1fx\t", len(ys), pct(ys, 50), pct(ys, 95), pct(ys, 50)/pct(o, 50))
		} else {
			line += "-\t-\t-\t-\t"
		}
		fmt.Fprintln(tw, line)
	}
	_ = tw.Flush()
	fmt.Printf("invariants: bedrock split-brain %d, lost writes %d, unaccounted divergent writes %d; yard-stick split-brain %d, lost %d, unaccounted %d\n",
		ours.split, ours.lost, ours.unacct, yard.split, yard.lost, yard.unacct)
	fmt.Printf("replication window: writes of the last %s before a fault lost per run, bedrock median %d max %d (%d runs)\n",
		cluster.AckWindow, medianInt(ours.window), maxInt(ours.window), len(ours.window))
	for _, f := range append(ours.failed, yard.failed...) {
		fmt.Println("failed run:", f)
	}
	fmt.Printf("bench-failover: crash_p50_s=%.2f crash_p95_s=%.2f node_p50_s=%.2f node_p95_s=%.2f default_lock_p50_s=%.2f split_brain=%d lost_writes=%d\n",
		pct(ours.samples[cluster.KillSyncer], 50), pct(ours.samples[cluster.KillSyncer], 95),
		pct(ours.samples[cluster.NodeLoss], 50), pct(ours.samples[cluster.NodeLoss], 95),
		pct(yard.samples[cluster.KillSyncer], 50), ours.split+yard.split, ours.lost+yard.lost)
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// runAll runs every scenario reps times, interleaved (one round = each scenario once) so that
// slow drifts of the machine spread over all of them.
func runAll(ctx context.Context, c *cluster.Cluster, name string, faults []cluster.Fault, reps int, s *series) error {
	for i := 0; i < reps; i++ {
		for _, f := range faults {
			r, err := c.Run(ctx, f)
			if err != nil {
				s.mu.Lock()
				s.failed = append(s.failed, fmt.Sprintf("%s %s #%d: %v", name, f, i+1, err))
				s.mu.Unlock()
				return fmt.Errorf("%s: %s run %d: %w", name, f, i+1, err)
			}
			s.add(r)
			fmt.Printf("%-10s %2d/%d %s\n", name, i+1, reps, r)
		}
	}
	return nil
}

func medianInt(v []int) int {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func maxInt(v []int) int {
	m := 0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

// nomadVersion is the first line of `nomad version`.
func nomadVersion() string {
	bin, err := nomad.Binary()
	if err != nil {
		return "nomad"
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return bin
	}
	return strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
}

// pct is the p-th percentile (nearest rank) in seconds; 100 is the maximum.
func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(p/100*float64(len(s))+0.999999) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank].Seconds()
}
