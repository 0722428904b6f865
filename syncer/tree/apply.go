package tree

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sync"
	"unsafe"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// ErrNeedResync reports a change that does not fit the local state (a block
// update for a file the clone does not have): the clone must resync.
var ErrNeedResync = errors.New("local state diverged, full resync needed")

// ErrBadBlock reports data whose hash does not match what the master sent.
var ErrBadBlock = errors.New("block checksum mismatch")

// Applier changes a clone's tree. Every access goes through Root, so no name
// can reach outside the data directory, even through a symlink.
//
// Durability: without Bulk every file is fdatasync'ed before it is renamed
// into place. With Bulk (what the clone uses) per-file syncs are skipped and
// the caller calls Sync (syncfs) before it records or acknowledges a
// position: a group commit. Thousands of fsyncs would dominate an initial
// sync, and a burst of live changes is acknowledged after one flush. A
// clone that crashes before the flush re-verifies every block against the
// master's manifest when it starts again, and an unacknowledged change is
// sent again anyway.
type Applier struct {
	Root   *os.Root
	Owners bool // apply uid/gid (only meaningful when running as root)
	Bulk   bool

	mu   sync.RWMutex
	dirs map[string]*os.File
}

// Prepare creates the temporary directory and removes leftovers of a crash.
func (a *Applier) Prepare() error {
	a.dropDirs()
	if err := a.Root.RemoveAll(TmpDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clean %s: %w", TmpDir, err)
	}
	if err := a.Root.MkdirAll(TmpDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", TmpDir, err)
	}
	return nil
}

// Sync flushes the whole filesystem holding the tree.
func (a *Applier) Sync() error {
	f, err := a.Root.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	return nil
}

// setTimes sets mtime without following a final symlink.
func (a *Applier) setTimes(name string, mtimeNs int64) error {
	dir, base := path.Split(name)
	if dir == "" {
		dir = "."
	}
	d, err := a.Root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	ts := []unix.Timespec{unix.NsecToTimespec(mtimeNs), unix.NsecToTimespec(mtimeNs)}
	if err := unix.UtimesNanoAt(int(d.Fd()), base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set mtime of %s: %w", name, err)
	}
	return nil
}

// SetMeta applies mode, owner and mtime of a file or directory (only owner
// and mtime for symlinks, whose mode is meaningless on Linux).
func (a *Applier) SetMeta(m wire.Meta) error {
	fi, err := a.Root.Lstat(m.Path)
	if err != nil {
		return err
	}
	if a.Owners {
		if err := a.Root.Lchown(m.Path, int(m.UID), int(m.GID)); err != nil {
			return err
		}
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		if err := a.Root.Chmod(m.Path, fs.FileMode(m.Mode)&ModeMask); err != nil {
			return err
		}
	}
	return a.setTimes(m.Path, m.MtimeNs)
}

// clear removes whatever is at name unless it is a directory and keepDir.
func (a *Applier) clear(name string, keepDir bool) error {
	fi, err := a.Root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if keepDir && fi.IsDir() {
		return nil
	}
	if fi.IsDir() {
		a.dropDirs()
	}
	return a.Root.RemoveAll(name)
}

func (a *Applier) ensureParent(name string) error {
	if p := Parent(name); p != "" {
		fi, err := a.Root.Lstat(p)
		if err == nil && fi.IsDir() {
			return nil
		}
		if err == nil {
			if err := a.Root.Remove(p); err != nil {
				return err
			}
		}
		return a.Root.MkdirAll(p, 0o755)
	}
	return nil
}

// Mkdir creates a directory (replacing a non-directory) and applies m.
func (a *Applier) Mkdir(m wire.Meta) error {
	if err := a.clear(m.Path, true); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.Path, err)
	}
	if err := a.ensureParent(m.Path); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.Path, err)
	}
	if err := a.Root.Mkdir(m.Path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("mkdir %s: %w", m.Path, err)
	}
	if err := a.SetMeta(m); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.Path, err)
	}
	return nil
}

// Symlink creates the link as given; the target is never resolved here.
func (a *Applier) Symlink(m wire.Symlink) error {
	if cur, err := a.Root.Readlink(m.Path); err == nil && cur == m.Target {
		return a.SetMeta(wire.Meta{Path: m.Path, MtimeNs: m.MtimeNs, UID: m.UID, GID: m.GID})
	}
	if err := a.clear(m.Path, false); err != nil {
		return fmt.Errorf("symlink %s: %w", m.Path, err)
	}
	if err := a.ensureParent(m.Path); err != nil {
		return fmt.Errorf("symlink %s: %w", m.Path, err)
	}
	if err := a.Root.Symlink(m.Target, m.Path); err != nil {
		return fmt.Errorf("symlink %s: %w", m.Path, err)
	}
	return a.SetMeta(wire.Meta{Path: m.Path, MtimeNs: m.MtimeNs, UID: m.UID, GID: m.GID})
}

// Delete removes a name and everything below it; a missing name is fine.
func (a *Applier) Delete(name string) error {
	a.dropDirs()
	if err := a.Root.RemoveAll(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// Rename moves from to to, replacing to.
func (a *Applier) Rename(from, to string) error {
	a.dropDirs()
	if _, err := a.Root.Lstat(from); err != nil {
		return fmt.Errorf("rename %s: %w (%w)", from, err, ErrNeedResync)
	}
	if err := a.clear(to, false); err != nil {
		return fmt.Errorf("rename %s -> %s: %w", from, to, err)
	}
	if err := a.ensureParent(to); err != nil {
		return fmt.Errorf("rename %s -> %s: %w", from, to, err)
	}
	if err := a.Root.Rename(from, to); err != nil {
		return fmt.Errorf("rename %s -> %s: %w", from, to, err)
	}
	return nil
}

// MoveAside moves name to dest (under LostFound), creating dest's parents.
func (a *Applier) MoveAside(name, dest string) error {
	a.dropDirs()
	if err := a.Root.MkdirAll(Parent(dest), 0o700); err != nil {
		return fmt.Errorf("move %s aside: %w", name, err)
	}
	if err := a.Root.Rename(name, dest); err != nil {
		return fmt.Errorf("move %s aside: %w", name, err)
	}
	return nil
}

// FileWriter receives the blocks of one file. A file that is new or
// rewritten whole goes to a temporary file renamed into place on Commit, so
// readers see the old or the new content, never a mix; a partial update
// (some blocks of an existing, possibly huge, file) is written in place.
type FileWriter struct {
	a       *Applier
	begin   wire.FileBegin
	f       *os.File
	tmp     string // name inside TmpDir
	created bool   // we created the file (temporary or final name)
	written int64
}

// BeginFile starts receiving b.
//
// With direct (initial sync) a whole file is created directly under its
// final name when nothing is there: it saves a create and a rename per
// file, which dominate the cost of syncing many small files. Atomicity
// matters only to a reader, and nothing reads a clone in initial sync: it
// is not caught up, so it cannot be promoted, and a restart after a crash
// verifies every block against the master before the clone reports synced.
func (a *Applier) BeginFile(b wire.FileBegin, direct bool) (*FileWriter, error) {
	w := &FileWriter{a: a, begin: b}
	base := path.Base(b.Path)
	if !b.Whole {
		var f *os.File
		err := a.withDirs(func(fds []int) error {
			fd, err := unix.Openat(fds[0], base, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			f = os.NewFile(uintptr(fd), b.Path)
			return nil
		}, Parent(b.Path))
		if err == nil {
			if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
				w.f = f
				return w, nil
			}
			f.Close()
		}
		return nil, fmt.Errorf("update %s: no local copy: %w", b.Path, ErrNeedResync)
	}
	if direct {
		err := a.withDirs(func(fds []int) error {
			fd, err := unix.Openat(fds[0], base, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return err
			}
			w.f = os.NewFile(uintptr(fd), b.Path)
			return nil
		}, Parent(b.Path))
		if err == nil {
			w.created = true
			return w, nil
		}
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	w.tmp = hex.EncodeToString(rnd[:])
	err := a.withDirs(func(fds []int) error {
		fd, err := unix.Openat(fds[0], w.tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		w.f = os.NewFile(uintptr(fd), b.Path)
		return nil
	}, TmpDir)
	if err != nil {
		w.tmp = ""
		return nil, fmt.Errorf("write %s: %w", b.Path, err)
	}
	w.created = true
	return w, nil
}

// Write verifies every block against its hash, then writes the data.
func (w *FileWriter) Write(d wire.FileData) error {
	if d.Offset%BlockSize != 0 || int64(len(d.Hashes)) != Blocks(int64(len(d.Data))) {
		return fmt.Errorf("%s: %w: misaligned data", w.begin.Path, wire.ErrMalformed)
	}
	if d.Offset+int64(len(d.Data)) > w.begin.Size {
		return fmt.Errorf("%s: %w: data past end of file", w.begin.Path, wire.ErrMalformed)
	}
	for i, h := range d.Hashes {
		end := min((i+1)*BlockSize, len(d.Data))
		if xxh3.Hash(d.Data[i*BlockSize:end]) != h {
			return fmt.Errorf("%s block %d: %w", w.begin.Path, d.Offset/BlockSize+int64(i), ErrBadBlock)
		}
	}
	if _, err := w.f.WriteAt(d.Data, d.Offset); err != nil {
		return fmt.Errorf("write %s: %w", w.begin.Path, err)
	}
	w.written += int64(len(d.Data))
	return nil
}

// Written is the number of data bytes written so far.
func (w *FileWriter) Written() int64 { return w.written }

// Commit sets size, owner and mode, syncs unless bulk, and renames a
// temporary file into place.
func (w *FileWriter) Commit() error {
	b := w.begin
	fail := func(err error) error {
		w.Abort()
		return fmt.Errorf("commit %s: %w", b.Path, err)
	}
	if !w.created || w.written != b.Size {
		if err := w.f.Truncate(b.Size); err != nil {
			return fail(err)
		}
	}
	if w.a.Owners && (!w.created || int(b.UID) != os.Geteuid() || int(b.GID) != os.Getegid()) {
		if err := w.f.Chown(int(b.UID), int(b.GID)); err != nil {
			return fail(err)
		}
	}
	if err := w.f.Chmod(fs.FileMode(b.Mode) & ModeMask); err != nil {
		return fail(err)
	}
	if !w.a.Bulk {
		if err := unix.Fdatasync(int(w.f.Fd())); err != nil {
			return fail(err)
		}
	}
	if err := futimens(int(w.f.Fd()), b.MtimeNs); err != nil {
		return fail(err)
	}
	if err := w.f.Close(); err != nil {
		w.f = nil
		return fail(err)
	}
	w.f = nil
	if w.tmp != "" {
		if err := w.a.renameIn(w.tmp, b.Path); err != nil {
			return fail(err)
		}
		w.tmp = ""
	}
	w.created = false
	return nil
}

// renameIn moves a temporary file to name, replacing what is there.
func (a *Applier) renameIn(tmp, name string) error {
	for attempt := 0; ; attempt++ {
		err := a.withDirs(func(fds []int) error {
			return unix.Renameat(fds[0], tmp, fds[1], path.Base(name))
		}, TmpDir, Parent(name))
		if err == nil || attempt > 0 {
			return err
		}
		// The parent is missing or not a directory, or a directory sits
		// where the file goes: fix the way (through Root) and retry once.
		a.dropDirs()
		if err := a.clear(name, false); err != nil {
			return err
		}
		if err := a.ensureParent(name); err != nil {
			return err
		}
	}
}

// Abort drops a partially received file.
func (w *FileWriter) Abort() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	if w.tmp != "" {
		_ = w.a.withDirs(func(fds []int) error { return unix.Unlinkat(fds[0], w.tmp, 0) }, TmpDir)
		w.tmp = ""
	} else if w.created {
		// Created under its final name: do not leave a partial file.
		_ = w.a.withDirs(func(fds []int) error { return unix.Unlinkat(fds[0], path.Base(w.begin.Path), 0) }, Parent(w.begin.Path))
	}
}

// futimens sets a file's mtime (and atime) through its descriptor.
func futimens(fd int, ns int64) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(ns), unix.NsecToTimespec(ns)}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// withDirs runs fn with open descriptors of directories of the tree. They
// are opened once through Root (so they cannot be outside the tree) and
// cached: os.Root resolves every name component by component, which for a
// tree of many small files costs more system calls than writing them.
// Operations on a cached directory use single, validated name components
// and never follow a final symlink. Anything that removes or renames
// directories drops the cache, since a cached descriptor follows its
// directory wherever it moves. The read lock keeps descriptors open while
// fn uses them; writers of the initial sync run in parallel.
func (a *Applier) withDirs(fn func(fds []int) error, dirs ...string) error {
	var fds [2]int
	for {
		missing, found := "", true
		a.mu.RLock()
		for i, d := range dirs {
			f, ok := a.dirs[d]
			if !ok {
				missing, found = d, false
				break
			}
			fds[i] = int(f.Fd())
		}
		if found {
			err := fn(fds[:len(dirs)])
			a.mu.RUnlock()
			return err
		}
		a.mu.RUnlock()
		f, err := a.Root.OpenFile(dotIfEmpty(missing), os.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return err
		}
		a.mu.Lock()
		if a.dirs == nil || len(a.dirs) >= 1024 {
			a.dropLocked()
		}
		if _, ok := a.dirs[missing]; ok {
			f.Close()
		} else {
			a.dirs[missing] = f
		}
		a.mu.Unlock()
	}
}

func (a *Applier) dropDirs() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropLocked()
}

func (a *Applier) dropLocked() {
	for _, f := range a.dirs {
		f.Close()
	}
	a.dirs = make(map[string]*os.File)
}

func dotIfEmpty(s string) string {
	if s == "" {
		return "."
	}
	return s
}
