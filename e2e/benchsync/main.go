// Command benchsync measures the syncer side by side with rsync (daemon on
// loopback) and Syncthing (sendonly -> receiveonly folders configured through
// its REST API) in one run:
//
//   - initial sync of a generated tree (many small files plus a few large),
//   - propagation latency of single 4 KiB writes to 2 clones (p50/p99),
//   - bytes on the wire for 1,000 random 4 KiB page writes into one large
//     file, framing included, divided by the bytes changed,
//   - resident memory of a master and a clone holding 100k files.
//
// It prints a table and, as its last line:
//
//	bench-sync: initial_vs_rsync=<x> initial_vs_syncthing=<x> p50_ms=<n> p99_ms=<n> syncthing_p99_ms=<n> delta_bytes_ratio=<x> rss_100k_mib=<n>
//
// The syncer processes are this program re-executed (argument
// "syncer-child"), so the benchmark needs nothing but `go run`. Every wait
// is bounded; children are stopped on exit. Network use is loopback only.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer"
)

const secret = "benchsync-shared-secret-0123456789"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "syncer-child" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		// BENCHSYNC_CPUPROFILE=<prefix> writes <prefix>.<pid>.pprof per child.
		if p := os.Getenv("BENCHSYNC_CPUPROFILE"); p != "" {
			if f, err := os.Create(fmt.Sprintf("%s.%d.pprof", p, os.Getpid())); err == nil {
				if pprof.StartCPUProfile(f) == nil {
					defer func() { pprof.StopCPUProfile(); f.Close() }()
				}
			}
		}
		code := syncer.Main(ctx, os.Args[2:], os.Stdout, os.Stderr)
		stop()
		if code != 0 {
			os.Exit(code)
		}
		return
	}
	os.Exit(run())
}

type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }
func (s *sizeFlag) Set(v string) error {
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if strings.HasSuffix(v, u.suf) {
			v, mult = strings.TrimSuffix(v, u.suf), u.m
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return err
	}
	*s = sizeFlag(n * mult)
	return nil
}

var (
	size       = sizeFlag(1 << 30)
	deltaSize  = sizeFlag(1 << 30)
	quick      = flag.Bool("quick", false, "fewer latency samples, smaller delta file (unless -delta-size is given)")
	rssFiles   = flag.Int("rss-files", 100000, "files in the memory test")
	latSamples = flag.Int("lat-samples", 300, "4 KiB writes timed for the syncer")
	stSamples  = flag.Int("syncthing-samples", 20, "4 KiB writes timed for Syncthing")
	pageWrites = flag.Int("page-writes", 1000, "random 4 KiB page writes in the delta test")
	workdir    = flag.String("workdir", "", "scratch directory (default: a new temp dir, removed afterwards)")
	rounds     = flag.Int("rounds", 5, "alternating initial-sync rounds (the medians count)")
	onlyInit   = flag.Bool("initial-only", false, "measure the initial sync only (for iterating on it)")
	skipST     = flag.Bool("skip-syncthing", false, "do not run Syncthing")
	dropCaches = flag.Bool("drop-caches", false, "before each initial-sync round, drop the page cache and read the source tree back in (when /proc/sys/vm/drop_caches is writable): every round then writes into recycled memory")
	verbose    = flag.Bool("v", false, "show child logs")
)

var children []*exec.Cmd

var logLevel = "warn"

func run() int {
	flag.Var(&size, "size", "size of the generated tree (e.g. 1GiB, 64MiB)")
	flag.Var(&deltaSize, "delta-size", "size of the file for page writes")
	flag.Parse()
	deltaSet := false
	flag.Visit(func(f *flag.Flag) { deltaSet = deltaSet || f.Name == "delta-size" })
	if *quick {
		if !deltaSet {
			deltaSize = sizeFlag(min(int64(size), 256<<20))
		}
		*latSamples = min(*latSamples, 100)
		*stSamples = min(*stSamples, 10)
	}
	defer stopChildren()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()

	base := *workdir
	if base == "" {
		d, err := os.MkdirTemp("", "benchsync-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		base = d
		defer os.RemoveAll(d)
	}
	r := &results{}
	if err := bench(ctx, base, r); err != nil {
		fmt.Fprintln(os.Stderr, "bench-sync:", err)
		return 1
	}
	if *onlyInit {
		fmt.Printf("bench-sync: initial_vs_rsync=%.2f initial_median_vs_rsync=%.2f syncer_median_s=%.2f rsync_median_s=%.2f\n",
			r.rsync.Seconds()/r.ours.Seconds(), median(r.rsyncAll).Seconds()/median(r.oursAll).Seconds(),
			median(r.oursAll).Seconds(), median(r.rsyncAll).Seconds())
		return 0
	}
	r.print()
	return 0
}

type results struct {
	treeBytes, treeFiles    int64
	ours, rsync, syncthing  time.Duration
	oursAll, rsyncAll       []time.Duration
	oursCache, rsyncCache   []float64 // page cache grown by a round's copy, MiB
	p50, p99, stP50, stP99  float64
	deltaSent, deltaChanged int64
	rssMaster, rssClone     float64
	syncthingErr            string
}

func (r *results) print() {
	ratio := func(a, b time.Duration) string {
		if a <= 0 || b <= 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", a.Seconds()/b.Seconds())
	}
	fmt.Printf("\n%-50s %14s %14s %14s\n", "measure", "syncer", "rsync", "syncthing")
	fmt.Printf("%-50s %14s %14s %14s\n", fmt.Sprintf("initial sync, %d files / %.0f MiB, median (s)", r.treeFiles, float64(r.treeBytes)/(1<<20)),
		secs(median(r.oursAll)), secs(median(r.rsyncAll)), secs(r.syncthing))
	fmt.Printf("%-50s %14s %14s %14s\n", fmt.Sprintf("initial sync, best of %d rounds (s)", len(r.oursAll)),
		secs(r.ours), secs(r.rsync), "-")
	fmt.Printf("%-50s %14.0f %14.0f %14s\n", "page cache left by the copy, median (MiB)", median(r.oursCache), median(r.rsyncCache), "-")
	fmt.Printf("%-50s %14.1f %14s %14s\n", "4 KiB write -> 2 clones, p50 (ms)", r.p50, "-", ms(r.stP50))
	fmt.Printf("%-50s %14.1f %14s %14s\n", "4 KiB write -> 2 clones, p99 (ms)", r.p99, "-", ms(r.stP99))
	fmt.Printf("%-50s %14s %14s %14s\n", fmt.Sprintf("%d page writes in %.0f MiB file: wire/changed", *pageWrites, float64(deltaSize)/(1<<20)),
		fmt.Sprintf("%.3f", float64(r.deltaSent)/float64(max(r.deltaChanged, 1))), "-", "-")
	fmt.Printf("%-50s %14.1f %14s %14s\n", fmt.Sprintf("RSS with %d files, master (MiB)", *rssFiles), r.rssMaster, "-", "-")
	fmt.Printf("%-50s %14.1f %14s %14s\n", fmt.Sprintf("RSS with %d files, clone (MiB)", *rssFiles), r.rssClone, "-", "-")
	if r.syncthingErr != "" {
		fmt.Printf("syncthing: %s\n", r.syncthingErr)
	}
	fmt.Printf("bench-sync: initial_vs_rsync=%s initial_vs_syncthing=%s p50_ms=%.1f p99_ms=%.1f syncthing_p99_ms=%s delta_bytes_ratio=%.3f rss_100k_mib=%.0f\n",
		ratio(median(r.rsyncAll), median(r.oursAll)), ratio(r.syncthing, median(r.oursAll)), r.p50, r.p99, ms(r.stP99),
		float64(r.deltaSent)/float64(max(r.deltaChanged, 1)), max(r.rssMaster, r.rssClone))
}

func median[T time.Duration | float64](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func secs(d time.Duration) string {
	if d <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", d.Seconds())
}

func ms(v float64) string {
	if v <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", v)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-sync: "+format+"\n", args...)
}

func bench(ctx context.Context, base string, r *results) error {
	src := filepath.Join(base, "src")
	logf("generating a %.0f MiB tree", float64(size)/(1<<20))
	files, bytes, err := genTree(src, int64(size))
	if err != nil {
		return err
	}
	r.treeFiles, r.treeBytes = files, bytes
	// Flush the generated tree so its writeback does not slow down
	// whichever tool happens to run first.
	syscall.Sync()

	// Syncer: master on src, two clones. The master has scanned before the
	// clock starts (it reports itself serving), like a running rsync
	// daemon. Initial syncs are timed in rounds, the order alternating
	// (syncer, rsync, rsync, syncer, ...), and the medians count: on a VM
	// the cost of the memory a copy writes into swings from round to round
	// (pages never touched before cost a fault to the host each; freed ones
	// come back cheap, until the host takes them back), and so do the
	// writeback of earlier phases and the neighbours' load. Both clocks
	// stop at a durable copy (rsync's after a sync).
	m, err := startSyncer(ctx, "master", src, "")
	if err != nil {
		return err
	}
	c1dir, c2dir := filepath.Join(base, "clone1"), filepath.Join(base, "clone2")
	// Every round writes to fresh directories; nothing is deleted until the
	// end (deleting on a filesystem mounted with discard slows the next
	// writer down).
	for round := 0; round < *rounds; round++ {
		oursRound := func() error {
			settle(src)
			cache0 := cachedMiB()
			t0 := time.Now()
			c1, err := startSyncer(ctx, "clone1", filepath.Join(base, fmt.Sprintf("round%d-syncer", round)), m.listen)
			if err != nil {
				return err
			}
			if err := c1.waitSynced(ctx, 20*time.Minute); err != nil {
				return err
			}
			d := time.Since(t0)
			r.oursCache = append(r.oursCache, cachedMiB()-cache0)
			c1.stop()
			logf("round %d: syncer initial sync %v", round+1, d)
			r.oursAll = append(r.oursAll, d)
			if r.ours == 0 || d < r.ours {
				r.ours = d
			}
			return nil
		}
		rsyncRound := func() error {
			settle(src)
			cache0 := cachedMiB()
			d, err := rsyncBench(ctx, base, src, filepath.Join(base, fmt.Sprintf("round%d-rsync", round)))
			if err != nil {
				return fmt.Errorf("rsync: %w", err)
			}
			r.rsyncCache = append(r.rsyncCache, cachedMiB()-cache0)
			logf("round %d: rsync initial sync %v", round+1, d)
			r.rsyncAll = append(r.rsyncAll, d)
			if r.rsync == 0 || d < r.rsync {
				r.rsync = d
			}
			return nil
		}
		// Alternate who goes first.
		first, second := oursRound, rsyncRound
		if round%2 == 1 {
			first, second = rsyncRound, oursRound
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
	}
	logf("initial sync medians: syncer %.2fs, rsync %.2fs, ratio %.2f (best: %.2f); page cache left: syncer %.0f MiB, rsync %.0f MiB",
		median(r.oursAll).Seconds(), median(r.rsyncAll).Seconds(),
		median(r.rsyncAll).Seconds()/median(r.oursAll).Seconds(), r.rsync.Seconds()/r.ours.Seconds(),
		median(r.oursCache), median(r.rsyncCache))
	if *onlyInit {
		return nil
	}
	c1, err := startSyncer(ctx, "clone1", c1dir, m.listen)
	if err != nil {
		return err
	}
	c2, err := startSyncer(ctx, "clone2", c2dir, m.listen)
	if err != nil {
		return err
	}
	for _, c := range []*child{c1, c2} {
		if err := c.waitSynced(ctx, 20*time.Minute); err != nil {
			return err
		}
	}

	// Latency: pwrite 4 KiB into a file and poll both clones for it.
	lat, err := latency(ctx, src, []string{c1dir, c2dir}, *latSamples, 200*time.Microsecond)
	if err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	r.p50, r.p99 = pct(lat, 50), pct(lat, 99)
	logf("syncer latency p50=%.1fms p99=%.1fms", r.p50, r.p99)

	// Delta: page writes into one large file.
	if err := deltaBench(ctx, m, []*child{c1, c2}, src, []string{c1dir, c2dir}, r); err != nil {
		return fmt.Errorf("delta: %w", err)
	}
	stopChildren()
	_ = os.Remove(filepath.Join(src, "delta.db"))
	_ = os.Remove(filepath.Join(src, "latency.bin"))
	_ = os.RemoveAll(filepath.Join(src, ".bedrock"))

	if !*skipST {
		syscall.Sync()
		if err := syncthingBench(ctx, base, src, r); err != nil {
			r.syncthingErr = err.Error()
			logf("syncthing: %v", err)
		}
		stopChildren()
	}

	// Memory with many files.
	if err := rssBench(ctx, base, r); err != nil {
		return fmt.Errorf("rss: %w", err)
	}
	return nil
}

// settle puts the earlier rounds' writes on disk before a round. With
// -drop-caches it also frees their pages and reads the source tree back in
// (as on a master that serves it), so that every round writes into
// recycled memory instead of whatever the previous round left: on a VM,
// pages never touched before cost far more than freed ones.
func settle(src string) {
	syscall.Sync()
	if !*dropCaches {
		return
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0o644); err != nil {
		logf("not dropping caches between rounds: %v", err)
		*dropCaches = false
		return
	}
	root, err := os.OpenRoot(src)
	if err != nil {
		return
	}
	defer root.Close()
	buf := make([]byte, 1<<20)
	_ = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		f, err := root.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		for {
			if _, err := f.Read(buf); err != nil {
				return nil
			}
		}
	})
}

// cachedMiB is the size of the page cache (Cached in /proc/meminfo), 0 if
// unknown.
func cachedMiB() float64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Cached:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// genTree writes half the bytes as small files (1-64 KiB, in nested dirs)
// and half as four large files. Content is random (incompressible).
func genTree(dir string, total int64) (int64, int64, error) {
	rng := mrand.New(mrand.NewPCG(1, 2)) //nolint:gosec // reproducible benchmark data, not secrets
	buf := make([]byte, 8<<20)
	_, _ = rand.Read(buf)
	var files, written int64
	small := total / 2
	for written < small {
		n := int64(1024 + rng.IntN(63*1024))
		p := filepath.Join(dir, "small", fmt.Sprintf("d%02d", files%50), fmt.Sprintf("e%02d", (files/50)%20), fmt.Sprintf("f%06d.dat", files))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return 0, 0, err
		}
		off := rng.IntN(len(buf) - int(n))
		if err := os.WriteFile(p, buf[off:off+int(n)], 0o644); err != nil {
			return 0, 0, err
		}
		files++
		written += n
	}
	large := (total - written) / 4
	for i := 0; i < 4; i++ {
		p := filepath.Join(dir, "large", fmt.Sprintf("blob%d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return 0, 0, err
		}
		f, err := os.Create(p)
		if err != nil {
			return 0, 0, err
		}
		for left := large; left > 0; {
			n := min(left, int64(len(buf)))
			buf[0] ^= byte(i + 1) // distinct content per file
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return 0, 0, err
			}
			left -= n
		}
		if err := f.Close(); err != nil {
			return 0, 0, err
		}
		files++
		written += large
	}
	return files, written, nil
}

type child struct {
	cmd     *exec.Cmd
	name    string
	listen  string
	metrics string
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startSyncer(ctx context.Context, name, dir, master string) (*child, error) {
	metrics, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"syncer-child", "-data", dir, "-metrics", metrics, "-id", name, "-log-level", logLevel}
	c := &child{name: name, metrics: metrics}
	if master == "" {
		if c.listen, err = freeAddr(); err != nil {
			return nil, err
		}
		args = append(args, "-listen", c.listen)
	} else {
		args = append(args, "-master", master)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "BEDROCK_SYNC_SECRET="+secret)
	if *verbose {
		cmd.Stderr = os.Stderr
		args = append(args, "-log-level", "debug")
		cmd.Args = append([]string{self}, args...)
	}
	if err := start(cmd); err != nil {
		return nil, err
	}
	c.cmd = cmd
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st, err := c.status()
		if err == nil && (st.Role == "clone" || (st.Role == "master" && st.Serving)) {
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("%s did not start", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	children = append(children, cmd)
	return nil
}

func stopChildren() {
	for _, c := range children {
		if c.Process != nil {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
		}
	}
	for _, c := range children {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	children = nil
}

var httpc = &http.Client{Timeout: 5 * time.Second}

// stop ends one child (SIGTERM, then SIGKILL after 5 s).
func (c *child) stop() {
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	for i, x := range children {
		if x == c.cmd {
			children = append(children[:i], children[i+1:]...)
			break
		}
	}
}

func (c *child) status() (syncer.Status, error) {
	var st syncer.Status
	resp, err := httpc.Get("http://" + c.metrics + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (c *child) metric(name string) (float64, error) {
	resp, err := httpc.Get("http://" + c.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum, nil
}

func (c *child) waitSynced(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.status()
		if err == nil && st.Synced && st.CaughtUp {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not synced in %v (last status %+v): %w", c.name, timeout, st, timeoutCause(ctx, err))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitQuiet waits until a master has had n clones acknowledge its head,
// with the head unchanged, over two polls 300 ms apart.
func (c *child) waitQuiet(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last uint64
	quiet := 0
	for {
		st, err := c.status()
		ok := err == nil && len(st.Clones) == n && st.Position.Seq == last
		for _, cl := range st.Clones {
			ok = ok && cl.LagOps == 0 && cl.Acked == st.Position.Seq
		}
		if ok {
			quiet++
		} else {
			quiet = 0
		}
		if quiet >= 2 {
			return nil
		}
		last = st.Position.Seq
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s still sending after %v (last status %+v): %w", c.name, timeout, st, timeoutCause(ctx, err))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// latency writes one 4 KiB page at a time into a file on the source and
// waits until every destination shows it.
func latency(ctx context.Context, src string, dsts []string, samples int, poll time.Duration) ([]float64, error) {
	const pages = 16
	name := "latency.bin"
	if err := os.WriteFile(filepath.Join(src, name), make([]byte, pages*4096), 0o644); err != nil {
		return nil, err
	}
	zero := make([]byte, pages*4096)
	for _, d := range dsts {
		if err := waitContent(ctx, filepath.Join(d, name), 0, zero, poll*10, 2*time.Minute); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(filepath.Join(src, name), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []float64
	page := make([]byte, 4096)
	for i := 0; i < samples; i++ {
		_, _ = rand.Read(page)
		off := int64(i%pages) * 4096
		t0 := time.Now()
		if _, err := f.WriteAt(page, off); err != nil {
			return nil, err
		}
		for _, d := range dsts {
			if err := waitContent(ctx, filepath.Join(d, name), off, page, poll, time.Minute); err != nil {
				return nil, fmt.Errorf("sample %d: %w", i, err)
			}
		}
		out = append(out, float64(time.Since(t0).Microseconds())/1000)
		time.Sleep(5 * time.Millisecond)
	}
	return out, nil
}

func waitContent(ctx context.Context, path string, off int64, want []byte, poll, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	got := make([]byte, len(want))
	for {
		if f, err := os.Open(path); err == nil {
			n, _ := f.ReadAt(got, off)
			f.Close()
			if n == len(want) && bytes.Equal(got, want) {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not get the write within %v", path, timeout)
		}
		time.Sleep(poll)
	}
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// wireBytesWhenQuiet waits until every clone holds p and follows the stream, and the master
// has nothing left to send, and then reads the master's wire bytes sent.
func wireBytesWhenQuiet(ctx context.Context, m *child, clones []*child, p string, dsts []string) (float64, error) {
	if err := waitSame(ctx, p, dsts, 10*time.Minute); err != nil {
		return 0, err
	}
	for _, c := range clones {
		if err := c.waitSynced(ctx, time.Minute); err != nil {
			return 0, err
		}
	}
	// A clone that holds the content may still have operations of the
	// file's growth coming (it cannot know the master's head while the
	// master is busy streaming): count from when the master has nothing
	// left to send.
	if err := m.waitQuiet(ctx, len(clones), time.Minute); err != nil {
		return 0, err
	}
	return m.metric("bedrock_sync_wire_bytes_sent_total")
}

func deltaBench(ctx context.Context, m *child, clones []*child, src string, dsts []string, r *results) error {
	p := filepath.Join(src, "delta.db")
	logf("delta: writing a %.0f MiB file", float64(deltaSize)/(1<<20))
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for left := int64(deltaSize); left > 0; left -= int64(len(buf)) {
		_, _ = rand.Read(buf)
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// Wait for the file to be replicated and quiet.
	before, err := wireBytesWhenQuiet(ctx, m, clones, p, dsts)
	if err != nil {
		return err
	}
	rng := mrand.New(mrand.NewPCG(3, 4)) //nolint:gosec // reproducible benchmark offsets, not secrets
	page := make([]byte, 4096)
	pagesInFile := int64(deltaSize) / 4096
	for i := 0; i < *pageWrites; i++ {
		_, _ = rand.Read(page)
		if _, err := f.WriteAt(page, rng.Int64N(pagesInFile)*4096); err != nil {
			return err
		}
		if i%10 == 9 {
			time.Sleep(time.Millisecond) // an application's pace, not one burst
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	after, err := wireBytesWhenQuiet(ctx, m, clones, p, dsts)
	if err != nil {
		return err
	}
	// Bytes on the wire per clone, against bytes the application changed.
	r.deltaSent = int64(after-before) / int64(len(clones))
	r.deltaChanged = int64(*pageWrites) * 4096
	logf("delta: %d bytes on the wire per clone for %d bytes changed", r.deltaSent, r.deltaChanged)
	return nil
}

// waitSame waits until every copy of path equals the source (compared by
// size, then content).
func waitSame(ctx context.Context, path string, dsts []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	rel := filepath.Base(path)
	for {
		want, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		ok := true
		for _, d := range dsts {
			got, err := os.ReadFile(filepath.Join(d, rel))
			if err != nil || !bytes.Equal(got, want) {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.New("copies did not converge")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func rsyncBench(ctx context.Context, base, src, dst string) (time.Duration, error) {
	addr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(base, "rsyncd.conf")
	body := fmt.Sprintf("use chroot = no\nuid = root\ngid = root\npid file = %s\n[src]\n    path = %s\n    read only = yes\n",
		filepath.Join(base, "rsyncd.pid"), src)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return 0, err
	}
	d := exec.Command("rsync", "--daemon", "--no-detach", "--config="+conf, "--address=127.0.0.1", "--port="+port)
	if err := start(d); err != nil {
		return 0, err
	}
	defer (&child{cmd: d}).stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return 0, errors.New("rsync daemon did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	t0 := time.Now()
	out, err := exec.CommandContext(cctx, "rsync", "-a", fmt.Sprintf("rsync://127.0.0.1:%s/src/", port), dst+"/").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	// Same durability as the syncer, which syncs the filesystem before it
	// reports the initial sync done.
	syscall.Sync()
	return time.Since(t0), nil
}

func rssBench(ctx context.Context, base string, r *results) error {
	dir := filepath.Join(base, "many")
	logf("rss: generating %d files", *rssFiles)
	b := make([]byte, 256)
	for i := 0; i < *rssFiles; i++ {
		p := filepath.Join(dir, fmt.Sprintf("d%03d", i%500), fmt.Sprintf("f%06d", i))
		if i < 500 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
		}
		b[0], b[1], b[2] = byte(i), byte(i>>8), byte(i>>16)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	m, err := startSyncer(ctx, "rss-master", dir, "")
	if err != nil {
		return err
	}
	c, err := startSyncer(ctx, "rss-clone", filepath.Join(base, "many-clone"), m.listen)
	if err != nil {
		return err
	}
	if err := c.waitSynced(ctx, 10*time.Minute); err != nil {
		return err
	}
	time.Sleep(time.Second)
	r.rssMaster, r.rssClone = rssMiB(m.cmd.Process.Pid), rssMiB(c.cmd.Process.Pid)
	logf("rss: master %.1f MiB, clone %.1f MiB", r.rssMaster, r.rssClone)
	stopChildren()
	return nil
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// timeoutCause explains why a bounded wait ended.
func timeoutCause(ctx context.Context, last error) error {
	if err := errors.Join(last, ctx.Err()); err != nil {
		return err
	}
	return errors.New("timed out")
}
