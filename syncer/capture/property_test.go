package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestConcurrentFsyncPrefixes: two goroutines change a small tree at the
// same time (writes, long-lived handles, truncates, renames of files and
// of whole directories, unlinks) and now and then fsync. An fsync stops
// the world (the other goroutine waits), then the master is snapshotted:
// the journal prefix that ends there must replay to that snapshot.
func TestConcurrentFsyncPrefixes(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			runInterleaving(t, func(g int) func(n int) int {
				rng := rand.New(rand.NewPCG(seed, uint64(g)))
				return rng.IntN
			}, 250)
		})
	}
}

// FuzzInterleaving drives the same two goroutines from fuzz input: each
// takes its choices from its half of the bytes. The scheduler adds its
// own interleaving on top.
func FuzzInterleaving(f *testing.F) {
	f.Add([]byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c"))
	f.Add([]byte("\x06\x06\x07\x07\x09\x00\x08\x06\x07\x09\x04\x08\x05\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 4 {
			return
		}
		half := len(data) / 2
		runInterleaving(t, func(g int) func(n int) int {
			b := data[:half]
			if g == 1 {
				b = data[half:]
			}
			i := 0
			return func(n int) int {
				if len(b) == 0 {
					return 0
				}
				var x [4]byte
				for k := range x {
					x[k] = b[i%len(b)]
					i++
				}
				return int(binary.LittleEndian.Uint32(x[:]) % uint32(n))
			}
		}, max(len(data), 20))
	})
}

var propNames = []string{"f0", "f1", "f2", "d0/f3", "d0/f4", "d1/f5", "d1/f6"}

func runInterleaving(t *testing.T, chooser func(g int) func(n int) int, steps int) {
	backing, mnt, j := mountT(t, Options{})
	for _, d := range []string{"d0", "d1"} {
		if err := os.Mkdir(filepath.Join(mnt, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	type rec struct {
		seq  uint64
		s    snap
		what string
	}
	var (
		world sync.RWMutex // ops share it; fsync+snapshot hold it alone
		recMu sync.Mutex
		recs  []rec
		wg    sync.WaitGroup
	)
	p := func(n string) string { return filepath.Join(mnt, n) }
	worker := func(g int, intn func(int) int) {
		defer wg.Done()
		var h *os.File // a long-lived handle: its file may be renamed under it
		defer func() {
			if h != nil {
				h.Close()
			}
		}()
		name := func() string { return propNames[intn(len(propNames))] }
		data := func() []byte {
			b := make([]byte, 1+intn(6000))
			for i := range b {
				b[i] = byte('a' + g*10 + intn(10))
			}
			return b
		}
		for range steps {
			op := intn(12)
			if op >= 9 {
				world.Lock()
				before := j.Len()
				var f *os.File
				var err error
				var what string
				switch {
				case op == 9 && h != nil:
					err, what = h.Sync(), "fsync handle"
				case op == 10:
					f, err = os.Open(p([]string{".", "d0", "d1"}[intn(3)]))
					what = "fsync dir"
				default:
					f, err = os.OpenFile(p(name()), os.O_RDWR, 0)
					what = "fsync file"
				}
				if f != nil {
					err = errors.Join(f.Sync(), f.Close())
				}
				if err == nil {
					recMu.Lock()
					// A handle whose file was unlinked has no name: its fsync
					// leaves no marker, and changes nothing a clone holds.
					if j.Len() == before {
						what += " (no name)"
					}
					recs = append(recs, rec{seq: j.Len(), s: snapshot(t, backing), what: what})
					recMu.Unlock()
				}
				world.Unlock()
				continue
			}
			world.RLock()
			switch op {
			case 0, 1, 2:
				if f, err := os.OpenFile(p(name()), os.O_RDWR|os.O_CREATE, 0o644); err == nil {
					_, _ = f.WriteAt(data(), int64(intn(8192)))
					f.Close()
				}
			case 3:
				if h == nil {
					h, _ = os.OpenFile(p(name()), os.O_RDWR|os.O_CREATE, 0o644)
				}
				if h != nil {
					_, _ = h.WriteAt(data(), int64(intn(8192)))
				}
			case 4:
				_ = os.Truncate(p(name()), int64(intn(9000)))
			case 5:
				_ = os.Rename(p(name()), p(name()))
			case 6:
				_ = os.Remove(p(name()))
			case 7:
				_ = unix.Renameat2(unix.AT_FDCWD, p("d0"), unix.AT_FDCWD, p("d1"), unix.RENAME_EXCHANGE)
			case 8:
				if h != nil {
					_ = h.Truncate(int64(intn(4000)))
					if intn(3) == 0 {
						h.Close()
						h = nil
					}
				}
			}
			world.RUnlock()
		}
	}
	wg.Add(2)
	go worker(0, chooser(0))
	go worker(1, chooser(1))
	wg.Wait()

	ops := j.Ops()
	fsyncs := fsyncPrefixes(ops)
	atFsync := map[uint64]bool{}
	for _, r := range recs {
		atFsync[r.seq] = true
	}
	for _, k := range fsyncs {
		if !atFsync[uint64(k)] {
			t.Fatalf("fsync marker at %d is not where any fsync returned", k)
		}
	}
	// One clone applies the journal in order; at every fsync point it must
	// hold the master's snapshot (recs are in journal order: each was taken
	// with the world stopped). The first and the last points are also
	// replayed onto fresh directories.
	clone := t.TempDir()
	rp, err := NewReplayer(clone)
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	rp.NoSync = true
	applied := uint64(0)
	for i, r := range recs {
		for ; applied < r.seq; applied++ {
			if err := rp.Apply(ops[applied]); err != nil {
				t.Fatalf("apply op %d: %v", applied+1, err)
			}
		}
		if d := diff(r.s, snapshot(t, clone)); d != "" {
			t.Fatalf("prefix %d ending at fsync %d (%s) differs from the master's snapshot: %s", r.seq, i, r.what, d)
		}
		if i == 0 || i == len(recs)-1 {
			if d := diff(r.s, replayFresh(t, ops[:r.seq])); d != "" {
				t.Fatalf("fresh replay of prefix %d differs from the master's snapshot: %s", r.seq, d)
			}
		}
	}
	if d := diff(snapshot(t, backing), replayFresh(t, ops)); d != "" {
		t.Fatalf("the whole journal does not replay to the master's final state: %s", d)
	}
	t.Logf("%d ops, %d fsync points checked", len(ops), len(recs))
}
