package tree

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// TestDropBehind: the committed files of an initial sync are held for
// drop-behind while the writeback runs, their pages leave the cache once
// a background sync has written them, and every descriptor is closed when
// the writeback stops; outside an initial sync nothing is held.
func TestDropBehind(t *testing.T) {
	dir := t.TempDir()
	a := bulkApplier(t, dir)
	if a.dropBehind(-1) {
		t.Fatal("drop-behind without a writeback running")
	}
	defer func(v int64) { writebackEvery = v }(writebackEvery)
	writebackEvery = 1 << 20

	fdsBefore := openFDs(t)
	stop := a.StartWriteback()
	defer stop()
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var hashes []uint64
	for o := 0; o < len(data); o += BlockSize {
		hashes = append(hashes, xxh3.Hash(data[o:o+BlockSize]))
	}
	write := func(name string, initial bool) {
		t.Helper()
		w, err := a.BeginFile(wire.FileBegin{Path: name, Size: int64(len(data)), Mode: 0o644, Whole: true}, initial)
		must(t, err)
		must(t, w.Write(wire.FileData{Hashes: hashes, Data: data}))
		must(t, w.Commit())
	}
	write("live", false)
	if wb := a.wb.Load(); len(wb.take()) != 0 {
		t.Fatal("a file written outside an initial sync is held")
	}
	// 8 files: half a writeback interval, held until the next one.
	for i := 0; i < 8; i++ {
		write(fmt.Sprintf("f%02d", i), true)
	}
	wb := a.wb.Load()
	wb.mu.Lock()
	held := len(wb.fds)
	wb.mu.Unlock()
	if held != 8 {
		t.Fatalf("%d files held for drop-behind, want 8", held)
	}
	// 24 more cross the interval: a sync runs and drops what it wrote.
	for i := 8; i < 32; i++ {
		write(fmt.Sprintf("f%02d", i), true)
	}
	// The background sync runs on its own goroutine: on a loaded machine give it its turn
	// before stopping it (it drops the first files once it has synced them).
	firstDropped := func() int {
		n := 0
		for i := 0; i < 8; i++ {
			if resident(t, filepath.Join(dir, fmt.Sprintf("f%02d", i))) == 0 {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(5 * time.Second); firstDropped() < 8 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if n := len(wb.take()); n != 0 {
		t.Fatalf("%d descriptors left after the writeback stopped", n)
	}
	a.dropDirs() // the directories it keeps open
	if n := openFDs(t); n > fdsBefore {
		t.Errorf("%d descriptors open after the writeback stopped, %d before it started", n, fdsBefore)
	}
	// The first files were written by a background sync and dropped:
	// none of their pages is in the cache any more.
	if dropped := firstDropped(); dropped != 8 {
		t.Errorf("%d of the first 8 files dropped from the cache, want all", dropped)
	}
	must(t, a.Sync())
	for i := 0; i < 32; i++ {
		p := filepath.Join(dir, fmt.Sprintf("f%02d", i))
		got, err := os.ReadFile(p)
		must(t, err)
		if !bytes.Equal(got, data) {
			t.Fatalf("%s differs", p)
		}
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// resident counts the pages of a file in the page cache.
func resident(t *testing.T, p string) int {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	fi, err := f.Stat()
	must(t, err)
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	must(t, err)
	defer func() { _ = unix.Munmap(m) }()
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
