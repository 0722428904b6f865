package syncer

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUnreadableFileReported runs the master as an unprivileged user: a
// file it cannot read is reported (log and metric), replication of the rest
// goes on, a clone keeps its own copy of that file, and the file travels
// once it becomes readable.
func TestUnreadableFileReported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the master as another user")
	}
	base, err := os.MkdirTemp("", "syncer-unreadable-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	must(t, os.Chmod(base, 0o755))
	mdir, cdir := filepath.Join(base, "master"), t.TempDir()
	must(t, os.Mkdir(mdir, 0o755))
	writeFile(t, filepath.Join(mdir, "public.txt"), []byte("anyone can read this"), 0o644)
	writeFile(t, filepath.Join(mdir, "private.key"), []byte("root only"), 0o600)
	must(t, os.Chown(mdir, 65534, 65534))
	// The clone already holds an older copy of the unreadable file.
	writeFile(t, filepath.Join(cdir, "private.key"), []byte("older copy"), 0o600)

	m := startSyncer(t, "master", mdir, procOpt{nobody: true})
	c := startSyncer(t, "clone", cdir, procOpt{master: m.listen})
	waitFor(t, 20*time.Second, "clone synced", func() bool { return c.status().CaughtUp })
	if b, err := os.ReadFile(filepath.Join(cdir, "public.txt")); err != nil || string(b) != "anyone can read this" {
		t.Fatalf("readable file not replicated: %q %v", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(cdir, "private.key")); string(b) != "older copy" {
		t.Fatalf("clone's copy of the unreadable file changed: %q", b)
	}
	if m.metric("bedrock_sync_unreadable_files_total") < 1 || !strings.Contains(m.logs.String(), "private.key") {
		t.Fatal("unreadable file not reported")
	}
	if st := m.status(); st.Role != "master" {
		t.Fatalf("master status %+v", st)
	}
	// Readable now: it replicates.
	must(t, os.Chmod(filepath.Join(mdir, "private.key"), 0o644))
	waitFor(t, 20*time.Second, "file replicated once readable", func() bool {
		b, _ := os.ReadFile(filepath.Join(cdir, "private.key"))
		return string(b) == "root only"
	})
}

// TestRescanCatchesWhatInotifyMisses writes through a shared memory mapping,
// which raises no inotify event (databases such as LMDB write this way): the
// periodic rescan finds the change.
func TestRescanCatchesWhatInotifyMisses(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	p := filepath.Join(mdir, "mapped.db")
	writeFile(t, p, make([]byte, 64<<10), 0o644)
	m := startSyncer(t, "master", mdir, procOpt{extra: []string{"-rescan", "500ms"}})
	startSyncer(t, "clone", cdir, procOpt{master: m.listen})
	waitEqual(t, 20*time.Second, mdir, cdir)

	f, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	mem, err := syscall.Mmap(int(f.Fd()), 0, 64<<10, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	must(t, err)
	copy(mem[8192:], "written through mmap")
	must(t, syscall.Munmap(mem))
	must(t, f.Close())
	waitEqual(t, 20*time.Second, mdir, cdir)
	if m.metric("bedrock_sync_rescans_total") < 1 {
		t.Fatal("no rescan counted")
	}
}
