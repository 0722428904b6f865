package failover

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/cluster"
	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/nomad"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/netns"
)

// TestFailoverUnderNomad runs the failover scenarios under a real Nomad agent: a server and four
// clients (one spare for replacements), each client with its own Consul agent, the plugin
// launched by Nomad from its plugin_dir, the job submitted through Nomad's API with Nomad's
// default restart block. Nomad's restarts, reschedules, contexts, hook order and GC are part of
// what is tested.
func TestFailoverUnderNomad(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Docker, Consul and Nomad")
	}
	nomad.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute+*soak)
	defer cancel()
	opts, faults := cluster.Options{Nomad: true, Netns: true}, cluster.Faults
	if err := netns.Available(); err != nil {
		t.Logf("the partition scenario needs network namespaces: %v; running the others", err)
		opts.Netns, faults = false, slices.DeleteFunc(slices.Clone(faults), func(f cluster.Fault) bool { return f == cluster.Partition })
	}
	if only := os.Getenv("BEDROCK_E2E_FAULTS"); only != "" {
		faults = nil
		for _, f := range strings.Split(only, ",") {
			faults = append(faults, cluster.Fault(f))
		}
	}
	c := cluster.Start(ctx, t, opts)
	t.Run("plugin-crash", func(t *testing.T) { pluginCrashKeepsTheLock(ctx, t, c) })
	t.Run("agent-restart", func(t *testing.T) {
		keepsTheLock(ctx, t, c, "client agent restart", (*cluster.Node).RestartAgent)
	})
	end := time.Now().Add(*soak)
	for round := 1; round == 1 || time.Now().Before(end); round++ {
		if !runRound(ctx, t, c, faults, round) {
			return
		}
	}
}

// TestStockConsulUnderNomad runs Bedrock on a Consul server started with no extra
// configuration: its session_ttl_min (10s) refuses the syncer's 3s TTL, so the syncer runs with
// the smallest TTL Consul allows and says so in a task event. A master is elected within 10s of
// `nomad job run`, and the crash and node-loss failovers still do not wait for the TTL.
func TestStockConsulUnderNomad(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Docker, Consul and Nomad")
	}
	nomad.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c := cluster.Start(ctx, t, cluster.Options{Nomad: true, StockConsul: true, Job: "stock"})
	if c.FirstMaster > 10*time.Second {
		t.Errorf("the first master served %s after nomad job run, want within 10s", c.FirstMaster)
	}
	if !c.WaitEvent(ctx, "Consul refused the 3s session TTL (its session_ttl_min is 10s)", 10*time.Second) {
		t.Errorf("no task event says that Consul raised the session TTL")
	}
	for _, f := range []cluster.Fault{cluster.KillSyncer, cluster.NodeLoss, cluster.KillApp} {
		ok := t.Run(string(f), func(t *testing.T) {
			runFault(ctx, t, c, f)
		})
		if !ok {
			return
		}
	}
}

// sqliteFaults is how many consecutive faults TestSQLiteUnderNomad injects (the long run:
// `make e2e E2EFLAGS=-sqlite-faults=60`).
var sqliteFaults = flag.Int("sqlite-faults", 7, "consecutive faults of the SQLite failover run")

// TestSQLiteUnderNomad: an app we did not tune for Bedrock (SQLite in WAL mode with
// synchronous=FULL, committing every 5 ms) through consecutive faults of mixed kinds under a
// real Nomad, former masters rejoining as clones between faults (Nomad restarts or replaces
// them). After each: the new master's database passes integrity_check, its ids have no gap,
// every row a clone held at the fault is on it, and every transaction acknowledged at least
// 250 ms before the fault is on it or in the old instance's lost+found. The loss inside those
// 250 ms (the asynchronous replication's window) is measured and reported.
func TestSQLiteUnderNomad(t *testing.T) {
	sqliteRun(t, cluster.Options{Nomad: true, App: cluster.AppSQLite, Job: "sqlite"}, *sqliteFaults)
}

// captureRuns drives TestCaptureUnderNomad: app:mode:faults runs, one cluster each (the long
// runs: -capture sqlite:async:60,sqlite:sync:60,ledger:async:60,ledger:sync:60).
var captureRuns = flag.String("capture", "sqlite:async:7,ledger:sync:5",
	"capture-mode runs, comma-separated app:mode:faults (app sqlite or ledger, mode async or sync; watch runs the same checks on the watcher's stream, as a control)")

// TestCaptureUnderNomad runs the transactional apps with their writes going through the capture
// mount (issue 16): SQLite (database + WAL, checkpoint-heavy) and our ledger (a log + an index
// that must agree).
// The clones follow the master's journal, so whatever the fault, the new master's files are a
// state the old master's disk really held (integrity ok, no gap); in sync mode no committed
// transaction (its fsync returned) is lost, in async mode the loss inside the last AckWindow
// is reported.
func TestCaptureUnderNomad(t *testing.T) {
	for _, spec := range strings.Split(*captureRuns, ",") {
		f := strings.Split(spec, ":")
		if len(f) != 3 || (f[0] != cluster.AppSQLite && f[0] != cluster.AppLedger) || (f[1] != "async" && f[1] != "sync" && f[1] != "watch") {
			t.Fatalf("-capture %q: want app:mode:faults, app sqlite or ledger, mode async, sync or watch (the control)", spec)
		}
		n, err := strconv.Atoi(f[2])
		if err != nil || n < 1 {
			t.Fatalf("-capture %q: faults must be a positive number", spec)
		}
		app, mode := f[0], f[1]
		t.Run(app+"-"+mode, func(t *testing.T) {
			// SQLite checkpoints its WAL into the database every 16 pages (a few commits): the
			// two files change together all the time.
			opts := cluster.Options{Nomad: true, App: app, Job: "capture-" + app, Mode: mode, WALAutocheckpoint: 16}
			if mode == "watch" {
				opts.Mode = "" // the watcher's stream: the control run, which may fail
			}
			window := sqliteRun(t, opts, n)
			if mode == "sync" {
				for i, n := range window {
					if n > 0 {
						t.Errorf("fault %d: %d committed transactions lost in sync mode", i+1, n)
					}
				}
			}
		})
	}
}

// sqliteRun injects n consecutive mixed faults into a SQLite group and checks every failover;
// it returns, per fault, the transactions lost inside the last AckWindow before it.
func sqliteRun(t *testing.T, opts cluster.Options, n int) []int {
	if testing.Short() {
		t.Skip("end-to-end: needs Docker, Consul and Nomad")
	}
	nomad.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute+time.Duration(n)*time.Minute)
	defer cancel()
	opts.Netns = netns.Available() == nil
	mix := []cluster.Fault{cluster.KillSyncer, cluster.KillApp, cluster.NodeLoss, cluster.FreezeSyncer, cluster.Graceful, cluster.KillSyncer, cluster.Partition}
	if !opts.Netns {
		mix = slices.DeleteFunc(mix, func(f cluster.Fault) bool { return f == cluster.Partition })
	}
	c := cluster.Start(ctx, t, opts)
	if opts.Mode != "" {
		// The capture mount is served by the syncer's container, not the plugin: a crash of the
		// master node's plugin and a restart of its Nomad agent leave the mount, the lock and the
		// app's writes alone.
		t.Run("plugin-crash", func(t *testing.T) {
			pluginCrashKeepsTheLock(ctx, t, c)
			checkCapture(ctx, t, c)
		})
		t.Run("agent-restart", func(t *testing.T) {
			keepsTheLock(ctx, t, c, "client agent restart", (*cluster.Node).RestartAgent)
			checkCapture(ctx, t, c)
		})
	}
	var window []int
	for i := 0; i < n; i++ {
		f := mix[i%len(mix)]
		ok := t.Run(fmt.Sprintf("%02d-%s", i+1, f), func(t *testing.T) {
			r := runFault(ctx, t, c, f)
			window = append(window, r.LostInWindow)
			if r.Integrity != "ok" {
				t.Errorf("integrity_check on the new master: %q", r.Integrity)
			}
			if opts.Mode != "" {
				checkCapture(ctx, t, c)
			}
		})
		if !ok {
			t.Logf("holder history: %s", c.History().String())
			break
		}
	}
	sorted := slices.Clone(window)
	slices.Sort(sorted)
	if len(sorted) > 0 {
		t.Logf("transactions lost inside the last %s before a fault, over %d faults: median %d, max %d",
			cluster.AckWindow, len(sorted), sorted[len(sorted)/2], sorted[len(sorted)-1])
	}
	return window
}

// checkCapture checks that the new master really serves its app through the capture mount
// and has cut its clones over to the journal (the run would pass on the watcher's stream too,
// only less surely).
func checkCapture(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	m, _, err := c.Master(ctx)
	if err != nil || m == nil {
		t.Fatalf("no master: %v", err)
	}
	mnt := filepath.Join(m.Dir, "alloc", "bedrock-live")
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	fuse := false
	for _, line := range strings.Split(string(info), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if ok && len(f) > 4 && f[4] == mnt && strings.HasPrefix(post, "fuse") {
			fuse = true
		}
	}
	if !fuse {
		t.Errorf("the master's %s is not a FUSE mount", mnt)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(m.SyncerLogs(), "clone cut over to the journal") {
		if time.Now().After(deadline) {
			t.Errorf("the master's syncer never cut a clone over to the journal")
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
