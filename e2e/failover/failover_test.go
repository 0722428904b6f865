// Package failover holds the end-to-end failover scenarios: a 3-node Bedrock group (real
// Consul server and client agents, real Docker, the plugin driven through plugin/harness)
// loses its master in each way in turn, and every time the invariants are checked from the
// writer app's term-stamped writes and Consul's history.
package failover

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/cluster"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/netns"
)

// soak repeats the scenarios for this long (the long variant: `make e2e E2EFLAGS=-soak=30m`);
// zero runs each once.
var soak = flag.Duration("soak", 0, "repeat the failover scenarios for this long")

func TestFailoverScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Docker and Consul")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute+*soak)
	defer cancel()
	opts, faults := cluster.Options{Netns: true}, cluster.Faults
	if err := netns.Available(); err != nil {
		t.Logf("the partition scenario needs network namespaces: %v; running the others", err)
		opts.Netns, faults = false, slices.DeleteFunc(slices.Clone(faults), func(f cluster.Fault) bool { return f == cluster.Partition })
	}
	c := cluster.Start(ctx, t, opts)
	t.Run("plugin-crash", func(t *testing.T) { pluginCrashKeepsTheLock(ctx, t, c) })
	end := time.Now().Add(*soak)
	for round := 1; round == 1 || time.Now().Before(end); round++ {
		if !runRound(ctx, t, c, faults, round) {
			return
		}
	}
}

// runRound runs every scenario once; it reports false when one failed.
func runRound(ctx context.Context, t *testing.T, c *cluster.Cluster, faults []cluster.Fault, round int) bool {
	for _, f := range faults {
		name := string(f)
		if round > 1 {
			name = fmt.Sprintf("%s#%d", f, round)
		}
		ok := t.Run(name, func(t *testing.T) {
			r := runFault(ctx, t, c, f)
			if r.New == r.OldMaster {
				t.Errorf("the old master %s was not replaced", r.OldMaster.ID)
			}
			// What the Nomad UI shows, and which path ended the old mastership.
			want := []string{fmt.Sprintf("Elected master (term %d)", r.NewTerm)}
			switch f {
			case cluster.KillApp:
				want = append(want, fmt.Sprintf("App exited while master (term %d)", r.OldTerm))
			case cluster.KillSyncer:
				want = append(want, fmt.Sprintf("lock of term %d released", r.OldTerm))
			case cluster.FreezeSyncer:
				want = append(want, "killed by the watchdog", fmt.Sprintf("lock of term %d released", r.OldTerm))
			case cluster.Partition:
				// the cut-off master could not renew: it demoted itself at its deadline
				want = append(want, fmt.Sprintf("Demoted (term %d): app stopped", r.OldTerm))
			}
			want = append(want, "Following ")
			for _, w := range want {
				// Nomad hands task events to its API asynchronously: give them a moment.
				if !c.WaitEvent(ctx, w, 15*time.Second) {
					t.Errorf("no task event saying %q", w)
				}
			}
		})
		if !ok {
			t.Logf("holder history: %s", c.History().String())
			return false
		}
	}
	return true
}

// runFault loses the master by fault and checks the invariants: no two masters, nothing a
// clone held lost, the old master's writes on the new master or in lost+found (outside the
// replication window), and with SQLite a sound, gap-free database on the new master.
func runFault(ctx context.Context, t *testing.T, c *cluster.Cluster, f cluster.Fault) *cluster.Result {
	t.Helper()
	r, err := c.Run(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r.String())
	for _, s := range r.SplitBrain {
		t.Errorf("two masters: %s", s)
	}
	if r.LostWrites > 0 {
		t.Errorf("%d writes the clones held at the fault are missing on the new master", r.LostWrites)
	}
	if r.NotSetAside > 0 {
		t.Errorf("%d writes of the old master, made at least %s before the fault, are neither on the new master nor set aside in lost+found",
			r.NotSetAside, cluster.AckWindow)
	}
	if r.Integrity != "" && r.Integrity != "ok" {
		t.Errorf("integrity_check on the new master: %s", r.Integrity)
	}
	if r.Gaps > 0 {
		t.Errorf("%d ids missing on the new master", r.Gaps)
	}
	return r
}

// pluginCrashKeepsTheLock: a crash of the master node's plugin costs nothing: the syncer and its
// session live in their own container, the app keeps running and writing at the same term, and
// the new plugin re-attaches to both.
func pluginCrashKeepsTheLock(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	keepsTheLock(ctx, t, c, "plugin crash", (*cluster.Node).CrashPlugin)
}

// keepsTheLock checks that fault, done to the master's node, costs nothing: same master, same
// term, and its app writes on.
func keepsTheLock(ctx context.Context, t *testing.T, c *cluster.Cluster, what string, fault func(*cluster.Node, context.Context) error) {
	m, term, err := c.Master(ctx)
	if err != nil || m == nil {
		t.Fatalf("no master: %v", err)
	}
	crash := time.Now()
	if err := fault(m.Node, ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // longer than the gate's silence and the lease's validity
	after, afterTerm, err := c.Master(ctx)
	if err != nil || after != m || afterTerm != term {
		t.Fatalf("after the %s the master is %v at term %d, want %s at term %d (err %v); holders: %s",
			what, after, afterTerm, m.ID, term, err, c.History().String())
	}
	ws, err := cluster.ReadWrites(m.WitnessFile())
	if err != nil {
		t.Fatal(err)
	}
	var before, since int
	for _, w := range ws {
		switch {
		case w.Term != term:
		case w.At.Before(crash):
			before++
		case w.At.After(crash.Add(2 * time.Second)):
			since++
		}
	}
	if before == 0 || since == 0 {
		t.Fatalf("the master's app wrote %d lines before the %s and %d from 2 s after it: it must keep writing", before, what, since)
	}
	// the recovered app is watched again: a stop now must reach it
	t.Logf("%s on %s: still master at term %d, %d writes since", what, m.Node.Name, term, since)
}
