package capture

import (
	"context"
	"strconv"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// file is an open regular file: a descriptor of the backing file. It
// deliberately does not implement go-fuse's FilePassthroughFder: with
// kernel passthrough the kernel would write to the backing file itself and
// no write would reach the journal.
type file struct {
	n  *node
	fd int // closed by Release; go-fuse calls nothing else on the handle after it
}

var (
	_ gofs.FileReader    = (*file)(nil)
	_ gofs.FileWriter    = (*file)(nil)
	_ gofs.FileGetattrer = (*file)(nil)
	_ gofs.FileReleaser  = (*file)(nil)
	_ gofs.FileFsyncer   = (*file)(nil)
	_ gofs.FileAllocater = (*file)(nil)
	_ gofs.FileLseeker   = (*file)(nil)
)

// Read splices from the backing file to the FUSE device when the kernel
// allows it (no copy through our memory).
func (h *file) Read(_ context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultFd(uintptr(h.fd), off, len(buf)), 0
}

// Write applies the data to the backing file and journals it in one
// critical section (see FS). data is the FUSE request buffer itself: the
// backing pwrite reads from it, and the journal sees the same slice.
func (h *file) Write(_ context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f := h.n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := syscall.Pwrite(h.fd, data, off)
	if n > 0 {
		if rel, ok := h.n.relPath(); ok {
			f.appendOp(Op{Kind: OpWrite, Path: rel, Off: off, Data: data[:n]})
		}
	}
	if err != nil && n <= 0 {
		return 0, gofs.ToErrno(err)
	}
	return uint32(n), 0
}

func (h *file) Getattr(_ context.Context, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Fstat(h.fd, &st); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStat(&st)
	return 0
}

func (h *file) Release(context.Context) syscall.Errno {
	return gofs.ToErrno(syscall.Close(h.fd))
}

// Fsync makes the backing file durable, then journals the marker (outside
// the ordering lock while the disk works; see FS).
func (h *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	var err error
	if flags&FsyncData != 0 {
		err = syscall.Fdatasync(h.fd)
	} else {
		err = syscall.Fsync(h.fd)
	}
	if err != nil {
		return gofs.ToErrno(err)
	}
	return h.n.fsys.fsynced(ctx, h.n, flags&FsyncData)
}

// Allocate is fallocate(2): preallocation changes no content, but punching
// a hole or zeroing a range does, and any mode may change the size.
func (h *file) Allocate(_ context.Context, off, size uint64, mode uint32) syscall.Errno {
	f := h.n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := unix.Fallocate(h.fd, mode, int64(off), int64(size)); err != nil {
		return gofs.ToErrno(err)
	}
	if rel, ok := h.n.relPath(); ok {
		f.appendOp(Op{Kind: OpFallocate, Path: rel, Off: int64(off), Size: int64(size), Flags: mode})
	}
	return 0
}

func (h *file) Lseek(_ context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(h.fd, int64(off), int(whence))
	if err != nil {
		return 0, gofs.ToErrno(err)
	}
	return uint64(n), 0
}

func itoa(i int) string { return strconv.Itoa(i) }

// statx fills st (and the birth time, which go-fuse uses as the inode
// generation so a recycled inode number is not taken for the old file).
func statx(dirfd int, path string, flags int, st *syscall.Stat_t, btime *syscall.Timespec) error {
	var x unix.Statx_t
	if err := unix.Statx(dirfd, path, flags, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &x); err != nil {
		return err
	}
	*st = syscall.Stat_t{
		Dev:     unix.Mkdev(x.Dev_major, x.Dev_minor),
		Ino:     x.Ino,
		Nlink:   uint64(x.Nlink),
		Mode:    uint32(x.Mode),
		Uid:     x.Uid,
		Gid:     x.Gid,
		Rdev:    unix.Mkdev(x.Rdev_major, x.Rdev_minor),
		Size:    int64(x.Size),
		Blksize: int64(x.Blksize),
		Blocks:  int64(x.Blocks),
		Atim:    syscall.Timespec{Sec: x.Atime.Sec, Nsec: int64(x.Atime.Nsec)},
		Mtim:    syscall.Timespec{Sec: x.Mtime.Sec, Nsec: int64(x.Mtime.Nsec)},
		Ctim:    syscall.Timespec{Sec: x.Ctime.Sec, Nsec: int64(x.Ctime.Nsec)},
	}
	*btime = syscall.Timespec{}
	if x.Mask&unix.STATX_BTIME != 0 {
		*btime = syscall.Timespec{Sec: x.Btime.Sec, Nsec: int64(x.Btime.Nsec)}
	}
	return nil
}
