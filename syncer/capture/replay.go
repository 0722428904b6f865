package capture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"

	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
)

// Replayer applies journaled ops to a directory, in order: what a clone
// does with the stream. Every name is checked by tree.ValidName and
// resolved through an os.Root (or an *at call on a directory opened
// through it, with a single-component name), so a journal cannot reach
// outside the directory, symlinks included.
type Replayer struct {
	root *os.Root
	// NoSync skips the fsyncs of OpFsync markers (tests that replay every
	// prefix). A clone syncs: a position it acknowledges must survive a
	// power cut.
	NoSync bool
	// Owners applies uid/gid (only root can).
	Owners bool
	// borrowed: root belongs to the caller (ReplayerOn).
	borrowed bool
}

// NewReplayer opens dir for replay.
func NewReplayer(dir string) (*Replayer, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	return &Replayer{root: r, Owners: os.Geteuid() == 0}, nil
}

// ReplayerOn replays into a directory the caller has open already (a
// clone's data root); Close leaves it open.
func ReplayerOn(root *os.Root) *Replayer {
	return &Replayer{root: root, Owners: os.Geteuid() == 0, borrowed: true}
}

// Close releases the directory.
func (r *Replayer) Close() error {
	if r.borrowed {
		return nil
	}
	return r.root.Close()
}

// Replay applies ops to dir and syncs at every fsync marker.
func Replay(ctx context.Context, dir string, ops []Op) error {
	r, err := NewReplayer(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	for i, op := range ops {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		if err := r.Apply(op); err != nil {
			return fmt.Errorf("replay op %d: %w", i+1, err)
		}
	}
	return nil
}

func checkName(p string) error {
	if p == "" {
		return nil // the root itself (fsync, setattr of the mount's root)
	}
	return tree.ValidName(p)
}

// at runs fn on the directory that holds p (opened through the root) and
// p's last component.
func (r *Replayer) at(p string, fn func(dirfd int, base string) error) error {
	if err := tree.ValidName(p); err != nil {
		return err
	}
	dir, base := path.Split(p)
	if dir == "" {
		dir = "."
	}
	d, err := r.root.Open(path.Clean(dir))
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(int(d.Fd()), base)
}

func (r *Replayer) openFile(p string, flag int) (*os.File, error) {
	if err := tree.ValidName(p); err != nil {
		return nil, err
	}
	return r.root.OpenFile(p, flag|unix.O_NOFOLLOW, 0)
}

func dotIfEmpty(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// Apply applies one op.
func (r *Replayer) Apply(op Op) error {
	if err := checkName(op.Path); err != nil {
		return err
	}
	if err := r.apply(op); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (r *Replayer) apply(op Op) error {
	switch op.Kind {
	case OpWrite:
		f, err := r.openFile(op.Path, os.O_WRONLY)
		if err != nil {
			return err
		}
		_, err = f.WriteAt(op.Data, op.Off)
		return errors.Join(err, f.Close())
	case OpTruncate:
		f, err := r.openFile(op.Path, os.O_WRONLY)
		if err != nil {
			return err
		}
		return errors.Join(f.Truncate(op.Size), f.Close())
	case OpFallocate:
		f, err := r.openFile(op.Path, os.O_WRONLY)
		if err != nil {
			return err
		}
		return errors.Join(unix.Fallocate(int(f.Fd()), op.Flags, op.Off, op.Size), f.Close())
	case OpCreate:
		flag := os.O_WRONLY | os.O_CREATE
		if op.Flags&CreateTrunc != 0 {
			flag |= os.O_TRUNC
		}
		f, err := r.openFile(op.Path, flag)
		if err != nil {
			return err
		}
		err = unix.Fchmod(int(f.Fd()), op.Mode&07777)
		if err == nil && r.Owners {
			err = unix.Fchown(int(f.Fd()), int(op.UID), int(op.GID))
		}
		return errors.Join(err, f.Close())
	case OpMkdir, OpMknod, OpSymlink:
		return r.at(op.Path, func(d int, base string) error {
			var err error
			switch op.Kind {
			case OpMkdir:
				err = unix.Mkdirat(d, base, op.Mode&07777)
			case OpMknod:
				err = unix.Mknodat(d, base, op.Mode, int(op.Rdev))
			default:
				err = unix.Symlinkat(op.Target, d, base)
			}
			if err != nil {
				return err
			}
			if op.Kind != OpSymlink {
				// Exact bits, whatever the clone's umask.
				if err := unix.Fchmodat(d, base, op.Mode&07777, 0); err != nil {
					return err
				}
			}
			if r.Owners {
				return unix.Fchownat(d, base, int(op.UID), int(op.GID), unix.AT_SYMLINK_NOFOLLOW)
			}
			return nil
		})
	case OpLink:
		if err := tree.ValidName(op.To); err != nil {
			return err
		}
		return r.at(op.Path, func(d1 int, b1 string) error {
			return r.at(op.To, func(d2 int, b2 string) error {
				return unix.Linkat(d1, b1, d2, b2, 0)
			})
		})
	case OpUnlink:
		return r.at(op.Path, func(d int, base string) error { return unix.Unlinkat(d, base, 0) })
	case OpRmdir:
		return r.at(op.Path, func(d int, base string) error { return unix.Unlinkat(d, base, unix.AT_REMOVEDIR) })
	case OpRename:
		if err := tree.ValidName(op.To); err != nil {
			return err
		}
		return r.at(op.Path, func(d1 int, b1 string) error {
			return r.at(op.To, func(d2 int, b2 string) error {
				return unix.Renameat2(d1, b1, d2, b2, uint(op.Flags))
			})
		})
	case OpSetattr:
		return r.setattr(op)
	case OpFsync:
		if r.NoSync {
			return nil
		}
		f, err := r.root.Open(dotIfEmpty(op.Path))
		if err != nil {
			return err
		}
		return errors.Join(f.Sync(), f.Close())
	case OpFlush:
		return nil
	default:
		return fmt.Errorf("unknown op kind %d", op.Kind)
	}
}

func (r *Replayer) setattr(op Op) error {
	apply := func(d int, base string, flags int) error {
		if op.Set&SetMode != 0 {
			// fchmodat cannot skip symlinks (and a symlink's mode means
			// nothing): the master only journals modes of what it could chmod.
			if err := unix.Fchmodat(d, base, op.Mode&07777, 0); err != nil {
				return err
			}
		}
		if op.Set&(SetUID|SetGID) != 0 && r.Owners {
			uid, gid := -1, -1
			if op.Set&SetUID != 0 {
				uid = int(op.UID)
			}
			if op.Set&SetGID != 0 {
				gid = int(op.GID)
			}
			if err := unix.Fchownat(d, base, uid, gid, flags); err != nil {
				return err
			}
		}
		if op.Set&(SetAtime|SetMtime) != 0 {
			ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
			if op.Set&SetAtime != 0 {
				ts[0] = unix.NsecToTimespec(op.Atime)
			}
			if op.Set&SetMtime != 0 {
				ts[1] = unix.NsecToTimespec(op.Mtime)
			}
			if err := unix.UtimesNanoAt(d, base, ts, flags); err != nil {
				return err
			}
		}
		return nil
	}
	if op.Path == "" {
		d, err := r.root.Open(".")
		if err != nil {
			return err
		}
		defer d.Close()
		return apply(int(d.Fd()), ".", 0)
	}
	return r.at(op.Path, func(d int, base string) error { return apply(d, base, unix.AT_SYMLINK_NOFOLLOW) })
}
