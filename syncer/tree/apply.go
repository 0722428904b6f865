package tree

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"unsafe"

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
	wb   atomic.Pointer[writeback]
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

// MkdirNew creates a directory that the caller knows is missing, with
// mode 0700 and nothing else: an initial sync sets the metadata of its
// directories at the end (DirMeta), after their entries are written. Its
// parent must exist; anything unexpected falls back to Mkdir.
func (a *Applier) MkdirNew(m wire.Meta) error {
	err := a.withDirs(func(fds []int) error {
		return unix.Mkdirat(fds[0], path.Base(m.Path), 0o700)
	}, Parent(m.Path))
	if err == nil {
		return nil
	}
	return a.Mkdir(m)
}

// DirMeta is SetMeta for a directory, through the cached descriptor of its
// parent (one open instead of a walk of the path per change).
func (a *Applier) DirMeta(m wire.Meta) error {
	err := a.withDirs(func(fds []int) error {
		fd, err := unix.Openat(fds[0], path.Base(m.Path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if a.Owners {
			if err := unix.Fchown(fd, int(m.UID), int(m.GID)); err != nil {
				return err
			}
		}
		if err := unix.Fchmod(fd, chmodBits(fs.FileMode(m.Mode)&ModeMask)); err != nil {
			return err
		}
		return futimens(fd, m.MtimeNs)
	}, Parent(m.Path))
	if err == nil {
		return nil
	}
	return a.SetMeta(m)
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
		f, err := a.openDir(missing)
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

// openDir opens a directory of the tree: by its last component from its
// parent's cached descriptor when there is one, else through Root.
func (a *Applier) openDir(name string) (*os.File, error) {
	if name != "" && name != TmpDir {
		a.mu.RLock()
		p, ok := a.dirs[Parent(name)]
		var fd int
		var err error
		if ok {
			fd, err = unix.Openat(int(p.Fd()), path.Base(name), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		a.mu.RUnlock()
		if ok && err == nil {
			return os.NewFile(uintptr(fd), name), nil
		}
	}
	return a.Root.OpenFile(dotIfEmpty(name), os.O_RDONLY|unix.O_DIRECTORY, 0)
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
