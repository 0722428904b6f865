package syncer

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReplication covers what a directory holds, initial sync and the live
// stream: nested and empty dirs, modes, mtimes, symlinks (kept as links,
// including ones pointing out of the tree), deletes, renames, in-place page
// writes in a large file.
func TestReplication(t *testing.T) {
	mdir, c1dir, c2dir := t.TempDir(), t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(mdir, "a/b/c/deep.txt"), []byte("deep"), 0o640)
	must(t, os.MkdirAll(filepath.Join(mdir, "empty/nested-empty"), 0o750))
	writeFile(t, filepath.Join(mdir, "big.db"), randBytes(8<<20, 1), 0o600)
	writeFile(t, filepath.Join(mdir, "exec.sh"), []byte("#!/bin/sh\n"), 0o755)
	writeFile(t, filepath.Join(mdir, "zero"), nil, 0o644)
	for i := 0; i < 200; i++ {
		writeFile(t, filepath.Join(mdir, "many", string(rune('a'+i%26)), filepath.Base(t.Name())+string(rune('0'+i%10))+".txt"), randBytes(100+i, byte(i)), 0o644)
	}
	must(t, os.Symlink("../big.db", filepath.Join(mdir, "a/rel-link")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(mdir, "abs-link")))
	must(t, os.Symlink("nowhere", filepath.Join(mdir, "dangling")))
	old := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	must(t, os.Chtimes(filepath.Join(mdir, "exec.sh"), old, old))

	m := startSyncer(t, "master", mdir, procOpt{})
	c1 := startSyncer(t, "clone1", c1dir, procOpt{master: m.listen})
	c2 := startSyncer(t, "clone2", c2dir, procOpt{master: m.listen})
	waitEqual(t, 30*time.Second, mdir, c1dir, c2dir)
	waitFor(t, 10*time.Second, "clones caught up", func() bool {
		return c1.status().CaughtUp && c2.status().CaughtUp
	})
	if fi, err := os.Lstat(filepath.Join(c1dir, "abs-link")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("abs-link not kept as a link: %v", err)
	}

	// Live changes.
	writeFile(t, filepath.Join(mdir, "new.txt"), []byte("hello"), 0o644)
	writeFile(t, filepath.Join(mdir, "x/y/z/fresh.txt"), []byte("in new dirs"), 0o600)
	must(t, os.MkdirAll(filepath.Join(mdir, "fresh-empty"), 0o700))
	must(t, os.Chmod(filepath.Join(mdir, "exec.sh"), 0o700))
	must(t, os.Rename(filepath.Join(mdir, "a/b"), filepath.Join(mdir, "moved-b")))
	must(t, os.Rename(filepath.Join(mdir, "zero"), filepath.Join(mdir, "empty/zero-moved")))
	must(t, os.RemoveAll(filepath.Join(mdir, "many/c")))
	must(t, os.Remove(filepath.Join(mdir, "dangling")))
	must(t, os.Symlink("new.txt", filepath.Join(mdir, "dangling")))
	waitEqual(t, 20*time.Second, mdir, c1dir, c2dir)

	// Changes inside a renamed directory are still seen (inotify watches
	// follow the inode; their names must follow the rename).
	writeFile(t, filepath.Join(mdir, "moved-b/c/after-rename.txt"), []byte("new"), 0o644)
	writeFile(t, filepath.Join(mdir, "moved-b/c/deep.txt"), []byte("deeper"), 0o640)
	waitEqual(t, 10*time.Second, mdir, c1dir, c2dir)

	// In-place page writes in the large file: only changed blocks travel.
	before := m.metric("bedrock_sync_bytes_sent_total")
	f, err := os.OpenFile(filepath.Join(mdir, "big.db"), os.O_RDWR, 0)
	must(t, err)
	for i := 0; i < 10; i++ {
		_, err := f.WriteAt(randBytes(4096, byte(100+i)), int64(i*200)*4096)
		must(t, err)
	}
	must(t, f.Close())
	waitEqual(t, 20*time.Second, mdir, c1dir, c2dir)
	sent := m.metric("bedrock_sync_bytes_sent_total") - before
	t.Logf("before %v after %v", before, before+sent)
	// Each clone needs 10 pages; events may split into several passes but
	// a page is never sent twice unless it changed twice.
	if sent > 2*2*10*4096 {
		t.Fatalf("sent %v bytes for 10 page writes to 2 clones", sent)
	}
	st := m.status()
	if st.Role != "master" || len(st.Clones) != 2 {
		t.Fatalf("master status %+v", st)
	}
}
