// Command benchio measures what the capture mount (syncer/capture) costs
// the app: its write throughput and fsync latency through the mount
// against the plain directory, side by side in one run, on the same disk:
//
//   - rand4k_fsync: 4 KiB writes at random aligned offsets of a 32 MiB
//     file, each followed by fsync (a database's commit path);
//   - seq1m: a 128 MiB file written in 1 MiB writes, then fsync;
//   - smallfile: create a temporary file, write 4 KiB, close, rename it
//     over its final name (the atomic-save pattern), no fsync: the pure
//     cost of the round trips;
//   - smallfile_fsync: the same with an fsync before the rename;
//   - sqlite: one-row INSERT transactions into a SQLite database
//     (modernc.org/sqlite, WAL, synchronous=FULL): a real app's commit path,
//     shared-memory index (mmap of the -shm file) included.
//
// The machine the project runs on is small and shared, so one run of a
// workload says little: every round runs every workload on every target
// (in a rotated order, so no target always runs first), each run in a
// fresh directory, and the table reports medians over the rounds, the
// ratio being the median of each round's mount/plain ratio.
//
// The "mount" target journals into the in-memory journal, data copied, as the real stream's
// producer does, and a stand-in for the clones' acks drops the journaled ops every few
// milliseconds. The "async" and "sync" targets are the real thing: the mount's journal is a
// capture-mode replica.Master with one real clone over loopback (the whole stream: encode,
// seal, send, apply, syncfs, ack). The clone runs in a process of its own under nice
// (-clone-nice, default 19) and keeps its copy beside the master's (-clone-dir): it stands for
// another node, whose CPU the app does not share, so it takes only the CPU the app leaves;
// in sync mode the app waits for it, and it has the CPU then. -clone-nice 0 shows the cost on
// one machine shared by both. The targets (-targets): "plain", "mount", "async", "sync",
// "mount-old" (the configuration before issue 16's tuning, capture.Options.Legacy), and for
// comparison "writeback" (the kernel's writeback cache, which breaks the ordering guarantee),
// "no-perms**" (without the kernel's permission checks, unsafe for an app that is not root)
// and "naive" (go-fuse's loopback defaults).
//
// It prints a table, a summary line per replicated target ("bench-io async: ...", "bench-io
// sync: ...", the sync one after the loopback TCP round trip, the floor under a sync fsync)
// and, as its last line (mount/plain, medians):
//
//	bench-io: rand4k_fsync_ratio=<x> seq1m_ratio=<x> smallfile_ratio=<x> smallfile_fsync_ratio=<x> sqlite_ratio=<x>
//
// It needs root and /dev/fuse; every run is bounded (-dur, at most 20 s
// and 128 MiB of data) and the mounts are unmounted on exit.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // pure Go SQLite, as the e2e test app uses

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
)

type result struct {
	rate     float64 // ops/s or MiB/s
	unit     string
	p50, p99 time.Duration // fsync (sqlite: commit) latency, when the workload has one
}

type workload struct {
	name string
	run  func(ctx context.Context, dir string, dur time.Duration) (result, error)
}

type target struct {
	name string
	opt  *capture.Options // nil: the plain directory
	// repl: the mount journals into a real replica.Master with one real clone over loopback
	// (the whole stream: encode, seal, send, apply, syncfs, ack): "async" or "sync".
	repl string
}

// allTargets are the configurations -targets can name.
var allTargets = []target{
	{name: "plain"},
	{name: "mount", opt: &capture.Options{}},
	{name: "mount-old", opt: &capture.Options{Legacy: true}},
	{name: "async", opt: &capture.Options{}, repl: "async"},
	{name: "sync", opt: &capture.Options{}, repl: "sync"},
	{name: "writeback*", opt: &capture.Options{Writeback: true}},
	{name: "no-perms**", opt: &capture.Options{NoDefaultPermissions: true}},
	{name: "naive", opt: &capture.Options{Legacy: true, NoCache: true, JournalFlush: true, Xattrs: true, MaxWrite: 128 << 10, NoKeepCache: true}},
}

var allWorkloads = []workload{
	{"rand4k_fsync", rand4kFsync},
	{"seq1m", seq1m},
	{"smallfile", func(ctx context.Context, d string, t time.Duration) (result, error) {
		return smallFiles(ctx, d, t, false)
	}},
	{"smallfile_fsync", func(ctx context.Context, d string, t time.Duration) (result, error) {
		return smallFiles(ctx, d, t, true)
	}},
	{"sqlite", sqliteInserts},
}

func main() {
	if spec := os.Getenv(cloneEnv); spec != "" {
		os.Exit(cloneMain(spec))
	}
	os.Exit(benchMain())
}

func benchMain() int {
	base := flag.String("dir", os.TempDir(), "directory on the disk to measure (a scratch directory is made inside)")
	dur := flag.Duration("dur", time.Second, "length of each timed run (bounded at 20s)")
	rounds := flag.Int("rounds", 5, "interleaved rounds; the table shows medians")
	targets := flag.String("targets", "plain,mount,async,sync", "targets to measure, comma-separated: plain (always), mount, mount-old, async, sync (a real master and clone over loopback), writeback*, no-perms**, naive")
	workloads := flag.String("workloads", "", "workloads to run, comma-separated (default: all)")
	flag.StringVar(&cloneDir, "clone-dir", "", "where the async and sync targets' clone keeps its copy (default: beside the master's, on the same disk; "+
		"in a deployment it is another node's disk, whose flushes do not queue behind the app's)")
	flag.IntVar(&cloneNice, "clone-nice", cloneNice, "nice level of the async and sync targets' clone process (it stands for another node; 0: compete with the app for the CPU)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (master, mount and clone run in this process) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchio: cpu profile:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	if *dur > 20*time.Second {
		*dur = 20 * time.Second
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	tgs, err := pick(allTargets, *targets, func(t target) string { return t.name })
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchio:", err)
		return 2
	}
	if tgs[0].name != "plain" {
		tgs = append([]target{allTargets[0]}, tgs...)
	}
	wls, err := pick(allWorkloads, *workloads, func(w workload) string { return w.name })
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchio:", err)
		return 2
	}
	if err := run(ctx, *base, *dur, max(*rounds, 1), tgs, wls); err != nil {
		fmt.Fprintln(os.Stderr, "benchio:", err)
		return 1
	}
	return 0
}

// pick returns the elements of all named in the comma-separated list
// (all of them for ""), in the order of all.
func pick[T any](all []T, list string, name func(T) string) ([]T, error) {
	if list == "" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		want[strings.TrimSpace(n)] = true
	}
	var out []T
	for _, x := range all {
		if want[name(x)] {
			out = append(out, x)
			delete(want, name(x))
		}
	}
	if len(want) > 0 {
		return nil, fmt.Errorf("unknown names in %q", list)
	}
	return out, nil
}

func median[T float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// samples are one target's results on one workload, one per round.
type samples struct {
	rates, ratios []float64
	p50s, p99s    []time.Duration
	unit          string
}

func run(ctx context.Context, base string, dur time.Duration, rounds int, targets []target, workloads []workload) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (it mounts FUSE)")
	}
	scratch, err := os.MkdirTemp(base, "benchio-")
	if err != nil {
		return fmt.Errorf("scratch directory: %w", err)
	}
	defer os.RemoveAll(scratch)

	got := map[string]map[string]*samples{}
	for _, w := range workloads {
		got[w.name] = map[string]*samples{}
		for _, tg := range targets {
			got[w.name][tg.name] = &samples{}
		}
	}
	journaled := map[string]uint64{}
	runs := 0
	for round := range rounds {
		for _, w := range workloads {
			rates := map[string]float64{}
			for i := range targets {
				tg := targets[(i+round)%len(targets)]
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("interrupted: %w", err)
				}
				runs++
				res, ops, err := runOne(ctx, scratch, fmt.Sprintf("%s-%d", w.name, runs), tg, w, dur)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", w.name, tg.name, err)
				}
				journaled[tg.name] += ops
				s := got[w.name][tg.name]
				s.rates = append(s.rates, res.rate)
				s.unit = res.unit
				if res.p50 > 0 {
					s.p50s = append(s.p50s, res.p50)
					s.p99s = append(s.p99s, res.p99)
				}
				rates[tg.name] = res.rate
			}
			for _, tg := range targets {
				got[w.name][tg.name].ratios = append(got[w.name][tg.name].ratios, rates[tg.name]/rates["plain"])
			}
		}
	}

	fmt.Printf("\nbench-io (%s per run, medians of %d interleaved rounds; data under %s)\n", dur, rounds, base)
	fmt.Printf("%-16s %-11s %14s %9s %11s %11s\n", "workload", "target", "throughput", "vs plain", "lat p50", "lat p99")
	for _, w := range workloads {
		for _, tg := range targets {
			s := got[w.name][tg.name]
			p50, p99 := "-", "-"
			if len(s.p50s) > 0 {
				p50, p99 = median(s.p50s).Round(time.Microsecond).String(), median(s.p99s).Round(time.Microsecond).String()
			}
			fmt.Printf("%-16s %-11s %8.1f %-5s %8.2fx %11s %11s\n", w.name, tg.name, median(s.rates), s.unit, median(s.ratios), p50, p99)
		}
	}
	fmt.Println("vs plain: the median of the rounds' mount/plain ratios; lat: fsync latency (sqlite: commit latency), medians of the rounds' percentiles")
	fmt.Println("mount-old: the configuration before issue 16's tuning (capture.Options.Legacy)")
	fmt.Println("writeback*: the kernel reorders writes; breaks the prefix guarantee, shown for comparison only")
	fmt.Println("no-perms**: without default_permissions (no GETATTR of the directory before each create/rename); not safe for an app that is not root")
	fmt.Printf("journal: %d ops appended by the tuned mount\n", journaled["mount"])
	line := func(target string) string {
		var b strings.Builder
		for i, w := range workloads {
			if s := got[w.name][target]; s != nil {
				if i > 0 {
					b.WriteByte(' ')
				}
				fmt.Fprintf(&b, "%s_ratio=%.2f", w.name, median(s.ratios))
			}
		}
		return b.String()
	}
	if got[workloads[0].name]["mount-old"] != nil {
		fmt.Printf("bench-io old: %s\n", line("mount-old"))
	}
	if got[workloads[0].name]["async"] != nil {
		fmt.Printf("bench-io async: %s\n", line("async"))
	}
	if got[workloads[0].name]["sync"] != nil {
		rtt50, rtt99 := loopbackRTT(ctx)
		fmt.Printf("loopback TCP round trip (the floor of a sync fsync): p50 %s, p99 %s\n", rtt50, rtt99)
		fmt.Printf("bench-io sync: %s\n", line("sync"))
	}
	if got[workloads[0].name]["mount"] != nil {
		fmt.Printf("bench-io: %s\n", line("mount"))
	}
	return nil
}

// runOne runs w once in a fresh directory: the plain one, or a mount over
// a fresh backing directory.
func runOne(ctx context.Context, scratch, name string, tg target, w workload, dur time.Duration) (result, uint64, error) {
	dir := filepath.Join(scratch, strings.Trim(tg.name, "*")+"-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return result{}, 0, fmt.Errorf("run directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if tg.opt == nil {
		res, err := w.run(ctx, dir, dur)
		return res, 0, err
	}
	mnt := dir + ".mnt"
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return result{}, 0, fmt.Errorf("mount point: %w", err)
	}
	defer os.Remove(mnt)
	if tg.repl != "" {
		return runReplicated(ctx, dir, mnt, tg, w, dur)
	}
	var j ackedJournal = &capture.MemJournal{}
	if tg.opt.Legacy {
		j = &allocJournal{}
	}
	srv, err := capture.Mount(dir, mnt, j, *tg.opt)
	if err != nil {
		return result{}, 0, fmt.Errorf("mount: %w", err)
	}
	// The clones' acks, roughly: the journal is trimmed to what the
	// slowest clone has not acknowledged, a few milliseconds' worth.
	acked := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-acked:
				return
			case <-t.C:
				j.Reset()
			}
		}
	}()
	res, err := w.run(ctx, mnt, dur)
	close(acked)
	ops := j.Len()
	if uerr := srv.Unmount(); uerr != nil && err == nil {
		err = uerr
	}
	return res, ops, err
}

// ackedJournal is a journal the stand-in for the clones' acks can trim.
type ackedJournal interface {
	capture.Journal
	Len() uint64
	Reset()
}

// allocJournal is the in-memory journal as it was before issue 16's
// tuning (one fresh allocation per write's data), for mount-old.
type allocJournal struct {
	mu   sync.Mutex
	ops  []capture.Op
	base uint64
}

func (j *allocJournal) Append(op capture.Op) uint64 {
	if op.Data != nil {
		op.Data = append([]byte(nil), op.Data...)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.ops = append(j.ops, op)
	return j.base + uint64(len(j.ops))
}

func (j *allocJournal) Len() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.base + uint64(len(j.ops))
}

func (j *allocJournal) Reset() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.base += uint64(len(j.ops))
	j.ops = nil
}

func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

func rand4kFsync(ctx context.Context, dir string, dur time.Duration) (result, error) {
	const size = 32 << 20
	f, err := os.OpenFile(filepath.Join(dir, "db"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return result{}, err
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	_, _ = rand.Read(chunk)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			return result{}, err
		}
	}
	if err := f.Sync(); err != nil {
		return result{}, err
	}
	page := make([]byte, 4096)
	var lat []time.Duration
	start := time.Now()
	n := 0
	for time.Since(start) < dur && ctx.Err() == nil {
		_, _ = rand.Read(page[:16])
		if _, err := f.WriteAt(page, int64(mrand.IntN(size/4096))*4096); err != nil { //nolint:gosec // offsets, not secrets
			return result{}, err
		}
		t0 := time.Now()
		if err := f.Sync(); err != nil {
			return result{}, err
		}
		lat = append(lat, time.Since(t0))
		n++
	}
	p50, p99 := percentiles(lat)
	return result{rate: float64(n) / time.Since(start).Seconds(), unit: "op/s", p50: p50, p99: p99}, nil
}

func seq1m(ctx context.Context, dir string, dur time.Duration) (result, error) {
	const total = 128 << 20
	buf := make([]byte, 1<<20)
	_, _ = rand.Read(buf)
	f, err := os.OpenFile(filepath.Join(dir, "big"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return result{}, err
	}
	defer f.Close()
	start := time.Now()
	written := 0
	for written < total && time.Since(start) < dur*4 && ctx.Err() == nil {
		if _, err := f.Write(buf); err != nil {
			return result{}, err
		}
		written += len(buf)
	}
	t0 := time.Now()
	if err := f.Sync(); err != nil {
		return result{}, err
	}
	fs := time.Since(t0)
	return result{rate: float64(written) / (1 << 20) / time.Since(start).Seconds(), unit: "MiB/s", p50: fs, p99: fs}, nil
}

func smallFiles(ctx context.Context, dir string, dur time.Duration, fsync bool) (result, error) {
	data := make([]byte, 4096)
	_, _ = rand.Read(data)
	var lat []time.Duration
	start := time.Now()
	n := 0
	for time.Since(start) < dur && ctx.Err() == nil {
		tmp := filepath.Join(dir, fmt.Sprintf(".f%d.tmp", n%100))
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return result{}, err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return result{}, err
		}
		if fsync {
			t0 := time.Now()
			if err := f.Sync(); err != nil {
				f.Close()
				return result{}, err
			}
			lat = append(lat, time.Since(t0))
		}
		if err := f.Close(); err != nil {
			return result{}, err
		}
		if err := os.Rename(tmp, filepath.Join(dir, fmt.Sprintf("f%d", n%100))); err != nil {
			return result{}, err
		}
		n++
	}
	p50, p99 := percentiles(lat)
	return result{rate: float64(n) / time.Since(start).Seconds(), unit: "op/s", p50: p50, p99: p99}, nil
}

// sqliteInserts commits one-row transactions into a WAL database with
// synchronous=FULL (every commit fsyncs the WAL), as the e2e test app does.
func sqliteInserts(ctx context.Context, dir string, dur time.Duration) (res result, err error) {
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		return result{}, fmt.Errorf("sqlite: %w", err)
	}
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("sqlite: close: %w", cerr)
		}
	}()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)`); err != nil {
		return result{}, fmt.Errorf("sqlite: schema: %w", err)
	}
	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		return result{}, fmt.Errorf("sqlite: journal mode %q, want wal: %w", mode, err)
	}
	v := make([]byte, 200)
	_, _ = rand.Read(v)
	var lat []time.Duration
	start := time.Now()
	n := 0
	for time.Since(start) < dur && ctx.Err() == nil {
		t0 := time.Now()
		if _, err := db.ExecContext(ctx, `INSERT INTO t (v) VALUES (?)`, v); err != nil {
			return result{}, fmt.Errorf("sqlite: insert: %w", err)
		}
		lat = append(lat, time.Since(t0))
		n++
	}
	p50, p99 := percentiles(lat)
	return result{rate: float64(n) / time.Since(start).Seconds(), unit: "tx/s", p50: p50, p99: p99}, nil
}
