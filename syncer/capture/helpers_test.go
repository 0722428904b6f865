package capture

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// mountT mounts a fresh backing directory and unmounts it when the test
// ends. It skips when FUSE cannot be used here (not root, no /dev/fuse).
func mountT(t testing.TB, opt Options) (backing, mnt string, j *MemJournal) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("capture tests mount FUSE and need root (CAP_SYS_ADMIN)")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("/dev/fuse is not usable here: %v", err)
	}
	f.Close()
	backing, mnt = t.TempDir(), t.TempDir()
	j = &MemJournal{}
	s, err := Mount(backing, mnt, j, opt)
	if err != nil {
		t.Skipf("cannot mount FUSE here: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return backing, mnt, j
}

// entry is what a snapshot compares: type and permission bits, and the
// content of files and symlinks. Times are not compared: a clone's
// implicit mtimes are its own.
type entry struct {
	mode    fs.FileMode
	content string
}

type snap map[string]entry

func snapshot(t testing.TB, dir string) snap {
	t.Helper()
	s := snap{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{mode: fi.Mode() & (fs.ModeType | fs.ModePerm)}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.content = string(b)
		case fi.Mode()&fs.ModeSymlink != 0:
			e.content, err = os.Readlink(p)
			if err != nil {
				return err
			}
		}
		s[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return s
}

func short(s string) string {
	if len(s) > 24 {
		return fmt.Sprintf("%q...(%d bytes)", s[:24], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// diff describes how b differs from a ("" if equal).
func diff(a, b snap) string {
	var out []string
	for p, ea := range a {
		eb, ok := b[p]
		switch {
		case !ok:
			out = append(out, "-"+p)
		case ea != eb:
			out = append(out, fmt.Sprintf("~%s: %v %s != %v %s", p, ea.mode, short(ea.content), eb.mode, short(eb.content)))
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			out = append(out, "+"+p)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// changed lists the paths whose entry differs between a and b.
func changed(a, b snap) map[string]bool {
	c := map[string]bool{}
	for p, e := range a {
		if f, ok := b[p]; !ok || e != f {
			c[p] = true
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			c[p] = true
		}
	}
	return c
}

// replayFresh replays ops onto a new directory and snapshots it.
func replayFresh(t testing.TB, ops []Op) snap {
	t.Helper()
	dir := t.TempDir()
	rp, err := NewReplayer(dir)
	if err != nil {
		t.Fatal(err)
	}
	rp.NoSync = true // the prefixes are compared, not kept
	for i, op := range ops {
		if err := rp.Apply(op); err != nil {
			t.Fatalf("replay op %d of %d: %v", i+1, len(ops), err)
		}
	}
	rp.Close()
	s := snapshot(t, dir)
	os.RemoveAll(dir)
	return s
}

// recorder runs a workload one syscall at a time and snapshots the
// master (the backing directory) after each one, with the journal length
// at that moment.
type recorder struct {
	t       testing.TB
	backing string
	mnt     string
	j       *MemJournal
	steps   []step
}

type step struct {
	desc string
	seq  uint64 // journal length after the step
	s    snap
}

func newRecorder(t testing.TB, backing, mnt string, j *MemJournal) *recorder {
	return &recorder{t: t, backing: backing, mnt: mnt, j: j, steps: []step{{desc: "start", s: snapshot(t, backing)}}}
}

func (r *recorder) p(name string) string { return filepath.Join(r.mnt, name) }

// do runs one syscall; a failure fails the test.
func (r *recorder) do(desc string, fn func() error) {
	r.t.Helper()
	if err := fn(); err != nil {
		r.t.Fatalf("%s: %v", desc, err)
	}
	r.steps = append(r.steps, step{desc: desc, seq: r.j.Len(), s: snapshot(r.t, r.backing)})
}

// put writes a whole file the way most apps do: open with O_TRUNC (one
// step), write (one step), close.
func (r *recorder) put(name, content string) {
	r.t.Helper()
	var f *os.File
	r.do("open+trunc "+name, func() (err error) {
		f, err = os.OpenFile(r.p(name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		return err
	})
	r.do(fmt.Sprintf("write %s=%s", name, short(content)), func() error { _, err := f.Write([]byte(content)); return err })
	r.do("close "+name, f.Close)
}

// checkEveryPrefix applies the journal one op at a time to a clone and
// checks that every prefix is a state the master was in: at a step
// boundary exactly that step's snapshot; inside a step (one syscall that
// took several ops, like a 3 MiB write) the previous snapshot on every
// path the step does not change. It returns the clone's snapshot after
// every prefix (index k: k ops applied).
func (r *recorder) checkEveryPrefix() []snap {
	t := r.t
	t.Helper()
	ops := r.j.Ops()
	clone := t.TempDir()
	rp, err := NewReplayer(clone)
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	rp.NoSync = true
	states := []snap{snapshot(t, clone)}
	si := 0 // last step with seq <= k
	for k := 0; k <= len(ops); k++ {
		if k > 0 {
			if err := rp.Apply(ops[k-1]); err != nil {
				t.Fatalf("apply op %d: %v", k, err)
			}
			states = append(states, snapshot(t, clone))
		}
		for si+1 < len(r.steps) && r.steps[si+1].seq <= uint64(k) {
			si++
		}
		got := states[k]
		cur := r.steps[si]
		if cur.seq == uint64(k) {
			if d := diff(cur.s, got); d != "" {
				t.Fatalf("prefix %d (after step %q) is not the master's state: %s", k, cur.desc, d)
			}
			continue
		}
		next := r.steps[si+1]
		moving := changed(cur.s, next.s)
		for p := range changed(cur.s, got) {
			if !moving[p] {
				t.Fatalf("prefix %d (inside step %q) changed %s, which that step does not change", k, next.desc, p)
			}
		}
	}
	if d := diff(snapshot(t, r.backing), states[len(ops)]); d != "" {
		t.Fatalf("the whole journal does not replay to the master's final state: %s", d)
	}
	return states
}

// fsyncPrefixes returns the journal lengths that end with an fsync marker.
func fsyncPrefixes(ops []Op) []int {
	var ks []int
	for i, op := range ops {
		if op.Kind == OpFsync {
			ks = append(ks, i+1)
		}
	}
	return ks
}
