package tree

import (
	"errors"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Opener opens files of a tree for reading in one system call where the
// kernel allows it (openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS),
// instead of os.Root's walk of one openat per name component. Both refuse
// names that resolve outside the tree; the opener also refuses to follow
// any symlink, which names from a scan never need (a scan does not descend
// into symlinks). Where openat2 is missing or filtered it falls back to
// the Root.
type Opener struct {
	root *os.Root
	dir  *os.File
	slow atomic.Bool
}

// NewOpener returns an opener for root. Close releases it.
func NewOpener(root *os.Root) *Opener {
	o := &Opener{root: root}
	d, err := root.Open(".")
	if err != nil {
		o.slow.Store(true)
	} else {
		o.dir = d
	}
	return o
}

// Open opens name read-only, without following symlinks.
func (o *Opener) Open(name string) (*os.File, error) {
	if !o.slow.Load() {
		how := unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		fd, err := unix.Openat2(int(o.dir.Fd()), name, &how)
		if err == nil {
			return os.NewFile(uintptr(fd), name), nil
		}
		if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
			return nil, &os.PathError{Op: "openat2", Path: name, Err: err}
		}
		o.slow.Store(true)
	}
	return o.root.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW, 0)
}

// Close releases the opener's directory descriptor.
func (o *Opener) Close() error {
	if o.dir != nil {
		return o.dir.Close()
	}
	return nil
}
