package tree

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// FileWriter receives the blocks of one file. A file that is new or
// rewritten whole goes to a temporary file renamed into place on Commit, so
// readers see the old or the new content, never a mix, and a crash leaves
// no partial file under a real name; a partial update (some blocks of an
// existing, possibly huge, file) is written in place.
type FileWriter struct {
	a       *Applier
	begin   wire.FileBegin
	fd      int    // -1 once closed
	tmp     string // temporary name, in tmpDir ("" for an update in place)
	tmpDir  string // the file's own directory (initial sync) or TmpDir
	written int64
	initial bool
	modeSet bool // created with its final mode
}

// tmpPrefix starts the names of the temporary files an initial sync
// creates next to their final names (a rename within one directory is the
// cheapest atomic one: it locks that directory only). One left by a crash
// is not on the master, so the next initial sync deletes it.
const tmpPrefix = ".bedrock-tmp-"

func tmpName() string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	return tmpPrefix + hex.EncodeToString(rnd[:])
}

// BeginFile starts receiving b.
//
// With initial (the files of an initial sync, which arrive in bulk) the
// temporary file is created in the file's own directory, and the data
// written is reported to the writeback goroutine (see StartWriteback).
func (a *Applier) BeginFile(b wire.FileBegin, initial bool) (*FileWriter, error) {
	w := &FileWriter{a: a, begin: b, fd: -1, initial: initial}
	if !b.Whole {
		err := a.withDirs(func(fds []int) error {
			fd, err := unix.Openat(fds[0], path.Base(b.Path), unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
				_ = unix.Close(fd)
				return errors.New("not a regular file")
			}
			w.fd = fd
			return nil
		}, Parent(b.Path))
		if err != nil {
			return nil, fmt.Errorf("update %s: no local copy: %w", b.Path, ErrNeedResync)
		}
		return w, nil
	}
	w.tmp, w.tmpDir = tmpName(), TmpDir
	if initial {
		w.tmpDir = Parent(b.Path)
	}
	// Created with its final mode when the umask lets it through, which
	// saves a chmod per file.
	perm := uint32(0o600)
	if mode, u := chmodBits(fs.FileMode(b.Mode)&ModeMask), processUmask(); u >= 0 && mode&^0o777 == 0 && mode&uint32(u) == 0 {
		perm, w.modeSet = mode, true
	}
	create := func(fds []int) error {
		fd, err := unix.Openat(fds[0], w.tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if err != nil {
			return err
		}
		w.fd = fd
		return nil
	}
	err := a.withDirs(create, w.tmpDir)
	if err != nil && w.tmpDir != TmpDir {
		// The directory is missing or not a directory: the temporary
		// directory will do, and Commit repairs the way.
		w.tmpDir = TmpDir
		err = a.withDirs(create, w.tmpDir)
	}
	if err != nil {
		w.tmp = ""
		return nil, fmt.Errorf("write %s: %w", b.Path, err)
	}
	return w, nil
}

// Write verifies every block against its hash, then writes the data.
func (w *FileWriter) Write(d wire.FileData) error {
	if d.Offset < 0 || d.Offset%BlockSize != 0 || int64(len(d.Hashes)) != Blocks(int64(len(d.Data))) {
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
	if err := pwriteAll(w.fd, d.Data, d.Offset); err != nil {
		return fmt.Errorf("write %s: %w", w.begin.Path, err)
	}
	w.written += int64(len(d.Data))
	if w.initial {
		w.a.dirtied(int64(len(d.Data)))
	}
	return nil
}

func pwriteAll(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.EIO
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// Written is the number of data bytes written so far.
func (w *FileWriter) Written() int64 { return w.written }

// Commit sets size, owner, mode and mtime, syncs unless bulk, and renames a
// temporary file into place.
func (w *FileWriter) Commit() error {
	b := w.begin
	fail := func(err error) error {
		w.Abort()
		return fmt.Errorf("commit %s: %w", b.Path, err)
	}
	created := w.tmp != ""
	if !created || w.written != b.Size {
		if err := unix.Ftruncate(w.fd, b.Size); err != nil {
			return fail(err)
		}
	}
	if w.a.Owners && (!created || int(b.UID) != os.Geteuid() || int(b.GID) != os.Getegid()) {
		if err := unix.Fchown(w.fd, int(b.UID), int(b.GID)); err != nil {
			return fail(err)
		}
	}
	if !w.modeSet {
		if err := unix.Fchmod(w.fd, chmodBits(fs.FileMode(b.Mode)&ModeMask)); err != nil {
			return fail(err)
		}
	}
	if !w.a.Bulk {
		if err := unix.Fdatasync(w.fd); err != nil {
			return fail(err)
		}
	}
	if err := futimens(w.fd, b.MtimeNs); err != nil {
		return fail(err)
	}
	if created {
		if err := w.a.renameIn(w.tmpDir, w.tmp, b.Path); err != nil {
			return fail(err)
		}
		w.tmp = ""
	}
	fd := w.fd
	w.fd = -1
	if w.initial && w.a.dropBehind(fd) {
		return nil
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("commit %s: %w", b.Path, err)
	}
	return nil
}

// chmodBits converts m to chmod's mode bits.
func chmodBits(m fs.FileMode) uint32 {
	o := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		o |= unix.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		o |= unix.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		o |= unix.S_ISVTX
	}
	return o
}

// processUmask is the process's umask, -1 if unknown. It is read from
// /proc (Linux 4.7+): umask(2) cannot read it without changing it, which
// would race with files being created meanwhile. The syncer never changes
// it.
var processUmask = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			u, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return -1
			}
			return int(u)
		}
	}
	return -1
})

// renameIn moves a temporary file of dir to name, replacing what is there.
func (a *Applier) renameIn(dir, tmp, name string) error {
	for attempt := 0; ; attempt++ {
		err := a.withDirs(func(fds []int) error {
			return unix.Renameat(fds[0], tmp, fds[1], path.Base(name))
		}, dir, Parent(name))
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
	if w.fd >= 0 {
		_ = unix.Close(w.fd)
		w.fd = -1
	}
	if w.tmp != "" {
		_ = w.a.withDirs(func(fds []int) error { return unix.Unlinkat(fds[0], w.tmp, 0) }, w.tmpDir)
		w.tmp = ""
	}
}
