package capture

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOrderedWorkloadEveryPrefix is issue 16's example: A and B are
// rewritten alternately with a large file in between, then renamed,
// truncated, deleted and fsynced. Today's watcher can ship A=AAAA3 next
// to B=BBBB1 (it reads A late); through the journal no prefix can hold a
// state the master never had.
func TestOrderedWorkloadEveryPrefix(t *testing.T) {
	backing, mnt, j := mountT(t, Options{})
	r := newRecorder(t, backing, mnt, j)

	r.put("A", "AAAA1")
	r.put("B", "BBBB1")
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16) // 3 MiB: several WRITE requests
	r.put("big", string(big))
	r.put("A", "AAAA2")
	r.put("B", "BBBB2")
	r.put("A", "AAAA3")

	// A handle opened before its file and directory are renamed keeps
	// writing: the journal must name the file where it is now.
	var h *os.File
	r.do("open A", func() (err error) { h, err = os.OpenFile(r.p("A"), os.O_RDWR, 0); return err })
	r.do("mkdir d", func() error { return os.Mkdir(r.p("d"), 0o750) })
	r.do("rename A d/A", func() error { return os.Rename(r.p("A"), r.p("d/A")) })
	r.do("rename d e", func() error { return os.Rename(r.p("d"), r.p("e")) })
	r.do("write e/A through the old handle", func() error { _, err := h.WriteAt([]byte("4"), 4); return err })
	r.do("fsync e/A", h.Sync)
	r.do("close e/A", h.Close)

	r.do("truncate big", func() error { return os.Truncate(r.p("big"), 1000) })
	var bh *os.File
	r.do("open big", func() (err error) { bh, err = os.OpenFile(r.p("big"), os.O_RDWR|os.O_APPEND, 0); return err })
	r.do("append to big", func() error { _, err := bh.Write([]byte("tail")); return err })
	r.do("ftruncate big", func() error { return bh.Truncate(10) })
	r.do("fdatasync big", func() error { return unix.Fdatasync(int(bh.Fd())) })
	r.do("close big", bh.Close)

	r.do("symlink", func() error { return os.Symlink("e/A", r.p("ln")) })
	r.do("hard link", func() error { return os.Link(r.p("B"), r.p("B2")) })
	r.do("chmod B", func() error { return os.Chmod(r.p("B"), 0o600) })
	r.do("utimes B", func() error { return os.Chtimes(r.p("B"), time.Unix(1e9, 0), time.Unix(1e9, 5)) })
	r.do("exchange B e/A", func() error {
		return unix.Renameat2(unix.AT_FDCWD, r.p("B"), unix.AT_FDCWD, r.p("e/A"), unix.RENAME_EXCHANGE)
	})
	if err := unix.Renameat2(unix.AT_FDCWD, r.p("B2"), unix.AT_FDCWD, r.p("big"), unix.RENAME_NOREPLACE); err == nil {
		t.Fatal("RENAME_NOREPLACE onto an existing name succeeded")
	}

	// Writes to a file that no longer has a name change nothing a clone
	// can see: applied, not journaled.
	// (B2 is another name of the file now at e/A: writing through it
	// after its unlink must be journaled under e/A.)
	var b2 *os.File
	r.do("open B2", func() (err error) { b2, err = os.OpenFile(r.p("B2"), os.O_RDWR, 0); return err })
	r.do("unlink B2", func() error { return os.Remove(r.p("B2")) })
	r.do("write through B2", func() error { _, err := b2.WriteAt([]byte("L"), 0); return err })
	r.do("close B2", b2.Close)
	var gone *os.File
	r.do("create gone", func() (err error) { gone, err = os.Create(r.p("gone")); return err })
	r.do("unlink gone", func() error { return os.Remove(r.p("gone")) })
	r.do("write unlinked", func() error { _, err := gone.Write([]byte("invisible")); return err })
	r.do("close unlinked", gone.Close)

	// The atomic-save pattern.
	var tmp *os.File
	r.do("create tmp", func() (err error) {
		tmp, err = os.OpenFile(r.p("e/.A.tmp"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		return err
	})
	r.do("write tmp", func() error { _, err := tmp.Write([]byte("AAAA5")); return err })
	r.do("fsync tmp", tmp.Sync)
	r.do("close tmp", tmp.Close)
	r.do("rename tmp over e/A", func() error { return os.Rename(r.p("e/.A.tmp"), r.p("e/A")) })
	r.do("fsync e", func() error {
		d, err := os.Open(r.p("e"))
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Sync()
	})
	r.do("mkdir x", func() error { return os.Mkdir(r.p("x"), 0o700) })
	r.do("rmdir x", func() error { return os.Remove(r.p("x")) })
	r.do("unlink ln", func() error { return os.Remove(r.p("ln")) })

	states := r.checkEveryPrefix()

	// The pairs (A, B) the master had; A lives at A, d/A or e/A.
	type pair struct{ a, b string }
	pairOf := func(s snap) pair {
		var p pair
		for _, n := range []string{"A", "d/A", "e/A"} {
			if e, ok := s[n]; ok && len(e.content) == 5 && e.content[:4] == "AAAA" {
				p.a = e.content
			}
		}
		if e, ok := s["B"]; ok {
			p.b = e.content
		}
		return p
	}
	seen := map[pair]bool{}
	for _, st := range r.steps {
		seen[pairOf(st.s)] = true
	}
	for k, s := range states {
		p := pairOf(s)
		if p.a == "AAAA3" && p.b == "BBBB1" {
			t.Fatalf("prefix %d holds A=AAAA3 with B=BBBB1", k)
		}
		if !seen[p] {
			t.Fatalf("prefix %d holds (A, B) = %v, which the master never had", k, p)
		}
	}

	// Every prefix that ends at an fsync, replayed onto a fresh directory,
	// is the master's state at that fsync.
	ops := j.Ops()
	ks := fsyncPrefixes(ops)
	if len(ks) < 4 {
		t.Fatalf("expected at least 4 fsync markers, got %d", len(ks))
	}
	for _, k := range ks {
		var want snap
		for _, st := range r.steps {
			if st.seq == uint64(k) {
				want = st.s
			}
		}
		if d := diff(want, replayFresh(t, ops[:k])); d != "" {
			t.Fatalf("fsync prefix %d differs from the master at that fsync: %s", k, d)
		}
	}
	for _, op := range ops {
		if op.Kind == OpWrite && bytes.Contains(op.Data, []byte("invisible")) {
			t.Fatal("a write to an unlinked file was journaled")
		}
	}
	if _, err := os.Stat(filepath.Join(backing, "e/A")); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d ops, %d steps, %d fsync markers", len(ops), len(r.steps), len(ks))
}
