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
//   - smallfile_fsync: the same with an fsync before the rename.
//
// Each mount configuration journals into the in-memory journal, data
// copied, as the real stream's producer will. Besides the tuned default it
// measures the settings that matter (-variants): go-fuse's loopback
// defaults ("naive") and the kernel's writeback cache ("writeback", which
// breaks the ordering guarantee and is shown only for what it would buy).
//
// It prints a table and, as its last line (mount/plain throughput of the
// tuned configuration):
//
//	bench-io: rand4k_fsync_ratio=<x> seq1m_ratio=<x> smallfile_ratio=<x>
//
// It needs root and /dev/fuse; every run is bounded (-dur, 128 MiB of data
// at most) and the mounts are unmounted on exit.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
)

type result struct {
	rate     float64 // ops/s or MiB/s
	unit     string
	p50, p99 time.Duration // fsync latency, when the workload fsyncs
}

type workload struct {
	name string
	run  func(ctx context.Context, dir string, dur time.Duration) (result, error)
}

type target struct {
	name string
	opt  *capture.Options // nil: the plain directory
}

func main() {
	base := flag.String("dir", os.TempDir(), "directory on the disk to measure (a scratch directory is made inside)")
	dur := flag.Duration("dur", 2*time.Second, "length of each timed run (bounded at 20s)")
	rounds := flag.Int("rounds", 2, "alternating rounds per target; the best is kept")
	variants := flag.Bool("variants", true, "also measure the naive and the writeback configurations")
	flag.Parse()
	if *dur > 20*time.Second {
		*dur = 20 * time.Second
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *base, *dur, *rounds, *variants); err != nil {
		fmt.Fprintln(os.Stderr, "benchio:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, base string, dur time.Duration, rounds int, variants bool) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (it mounts FUSE)")
	}
	scratch, err := os.MkdirTemp(base, "benchio-")
	if err != nil {
		return fmt.Errorf("scratch directory: %w", err)
	}
	defer os.RemoveAll(scratch)

	targets := []target{{name: "plain"}, {name: "mount", opt: &capture.Options{}}}
	if variants {
		targets = append(targets,
			target{name: "mount naive", opt: &capture.Options{NoCache: true, JournalFlush: true, Xattrs: true, MaxWrite: 128 << 10, NoKeepCache: true}},
			target{name: "mount writeback*", opt: &capture.Options{Writeback: true}},
			target{name: "mount no-perms**", opt: &capture.Options{NoDefaultPermissions: true}})
	}
	workloads := []workload{
		{"rand4k_fsync", rand4kFsync},
		{"seq1m", seq1m},
		{"smallfile", func(ctx context.Context, d string, t time.Duration) (result, error) {
			return smallFiles(ctx, d, t, false)
		}},
		{"smallfile_fsync", func(ctx context.Context, d string, t time.Duration) (result, error) {
			return smallFiles(ctx, d, t, true)
		}},
	}
	best := map[string]map[string]result{}
	journaled := map[string]uint64{}
	for _, w := range workloads {
		best[w.name] = map[string]result{}
		for round := range rounds {
			for _, tg := range targets {
				if err := ctx.Err(); err != nil {
					return err
				}
				res, ops, err := runOne(ctx, scratch, fmt.Sprintf("%s-%d-%d", w.name, round, len(best[w.name])), tg, w, dur)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", w.name, tg.name, err)
				}
				journaled[tg.name] += ops
				if b, ok := best[w.name][tg.name]; !ok || res.rate > b.rate {
					best[w.name][tg.name] = res
				}
			}
		}
	}

	fmt.Printf("\nbench-io (%s per run, best of %d; data under %s)\n", dur, rounds, base)
	fmt.Printf("%-16s %-18s %12s %10s %12s %12s\n", "workload", "target", "throughput", "vs plain", "fsync p50", "fsync p99")
	for _, w := range workloads {
		plain := best[w.name]["plain"]
		for _, tg := range targets {
			r := best[w.name][tg.name]
			p50, p99 := "-", "-"
			if r.p50 > 0 {
				p50, p99 = r.p50.Round(time.Microsecond).String(), r.p99.Round(time.Microsecond).String()
			}
			fmt.Printf("%-16s %-18s %8.1f %-4s %9.2fx %12s %12s\n", w.name, tg.name, r.rate, r.unit, r.rate/plain.rate, p50, p99)
		}
	}
	fmt.Println("* writeback: the kernel reorders writes; breaks the prefix guarantee, shown for comparison only")
	fmt.Println("** no-perms: without default_permissions (the kernel skips its permission checks and the GETATTRs they need); not safe for an app that is not root")
	fmt.Printf("journal: %d ops appended by the tuned mount\n", journaled["mount"])
	ratio := func(w string) float64 { return best[w]["mount"].rate / best[w]["plain"].rate }
	fmt.Printf("bench-io: rand4k_fsync_ratio=%.2f seq1m_ratio=%.2f smallfile_ratio=%.2f\n",
		ratio("rand4k_fsync"), ratio("seq1m"), ratio("smallfile"))
	return nil
}

// runOne runs w once in a fresh directory: the plain one, or a mount over
// a fresh backing directory.
func runOne(ctx context.Context, scratch, name string, tg target, w workload, dur time.Duration) (result, uint64, error) {
	dir := filepath.Join(scratch, strings.ReplaceAll(tg.name, " ", "_")+"-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return result{}, 0, err
	}
	defer os.RemoveAll(dir)
	if tg.opt == nil {
		res, err := w.run(ctx, dir, dur)
		return res, 0, err
	}
	mnt := dir + ".mnt"
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return result{}, 0, err
	}
	defer os.Remove(mnt)
	j := &capture.MemJournal{}
	srv, err := capture.Mount(dir, mnt, j, *tg.opt)
	if err != nil {
		return result{}, 0, err
	}
	res, err := w.run(ctx, mnt, dur)
	ops := j.Len()
	if uerr := srv.Unmount(); uerr != nil && err == nil {
		err = uerr
	}
	return res, ops, err
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
