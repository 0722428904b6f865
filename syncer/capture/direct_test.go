package capture

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDirectWriteCoherence: a write-only descriptor writes directly (no
// page cache), while another descriptor of the same file has its pages
// cached and mapped. Reads through the cached descriptor, the mapping
// and a fresh descriptor must all see the direct writes, and the journal
// must hold them.
func TestDirectWriteCoherence(t *testing.T) {
	backing, mnt, j := mountT(t, Options{})
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte("A"), 3*4096), 0o644); err != nil {
		t.Fatal(err)
	}
	rw, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	buf := make([]byte, 3*4096)
	if _, err := rw.ReadAt(buf, 0); err != nil { // cache every page
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(rw.Fd()), 0, 3*4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	_ = m[0] + m[4096] + m[8192] // fault the pages in

	wo, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A partial page, a range across a page boundary, and a whole page.
	if _, err := wo.WriteAt([]byte("bb"), 10); err != nil {
		t.Fatal(err)
	}
	if _, err := wo.WriteAt(bytes.Repeat([]byte("c"), 100), 4096-50); err != nil {
		t.Fatal(err)
	}
	if _, err := wo.WriteAt(bytes.Repeat([]byte("d"), 4096), 8192); err != nil {
		t.Fatal(err)
	}
	if err := wo.Close(); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("A"), 3*4096)
	copy(want[10:], "bb")
	copy(want[4096-50:], bytes.Repeat([]byte("c"), 100))
	copy(want[8192:], bytes.Repeat([]byte("d"), 4096))

	if _, err := rw.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, want) {
		t.Fatal("the cached descriptor reads stale data after a direct write")
	}
	if !bytes.Equal(m, want) {
		t.Fatal("the shared mapping shows stale data after a direct write")
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("a fresh open reads stale data after a direct write (%v)", err)
	}
	if got, err := os.ReadFile(filepath.Join(backing, "f")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the backing file differs (%v)", err)
	}
	// And the other way round: a write through the cached descriptor is
	// seen by a write-only descriptor's file, i.e. by everyone.
	if _, err := rw.WriteAt([]byte("E"), 0); err != nil {
		t.Fatal(err)
	}
	want[0] = 'E'
	if !bytes.Equal(m, want) {
		t.Fatal("the mapping misses a write through its own descriptor")
	}
	// O_APPEND through a direct descriptor lands at the end.
	ap, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"zz", "y"} {
		if _, err := ap.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ap.Close(); err != nil {
		t.Fatal(err)
	}
	want = append(want, "zzy"...)
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("O_APPEND through a direct descriptor: got %d bytes ending %q (%v)", len(got), got[max(0, len(got)-4):], err)
	}
	if d := diff(snapshot(t, backing), replayFresh(t, j.Ops())); d != "" {
		t.Fatalf("the journal does not replay to the master: %s", d)
	}
}

// TestDirectWriteOneRequest: a write-only descriptor's write(2) reaches
// the server as one WRITE even where it straddles a page the kernel has
// not cached (the cached path cuts it there), and a read-write
// descriptor's does not use direct I/O (it would send every read to us).
func TestDirectWriteOneRequest(t *testing.T) {
	l := &reqLog{}
	_, mnt, _ := mountT(t, Options{Debug: true, logger: log.New(l, "", 0)})
	writes := func(flag int) int {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(mnt, fmt.Sprint("f", flag)), flag|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		l.take()
		if _, err := f.WriteAt(bytes.Repeat([]byte("x"), 200), 4096-100); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, x := range rxRe.FindAllStringSubmatch(l.take(), -1) {
			if x[1] == "WRITE" {
				n++
			}
		}
		return n
	}
	if n := writes(os.O_WRONLY); n != 1 {
		t.Fatalf("a write-only descriptor sent %d WRITEs for one write(2), want 1 (direct I/O)", n)
	}
	if n := writes(os.O_RDWR); n != 2 {
		t.Fatalf("a read-write descriptor sent %d WRITEs for a write across an uncached page, want 2 (the page cache path)", n)
	}
}
