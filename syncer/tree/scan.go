package tree

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"syscall"

	"github.com/zeebo/xxh3"
)

// FromInfo builds an entry from lstat information, without hashes. It
// returns nil for types that are not replicated (devices, sockets, FIFOs).
func FromInfo(name string, fi fs.FileInfo) *Entry {
	e := &Entry{Path: name, Mode: fi.Mode() & ModeMask, MtimeNs: fi.ModTime().UnixNano()}
	switch {
	case fi.Mode().IsRegular():
		e.Type = TypeFile
		e.Size = fi.Size()
	case fi.IsDir():
		e.Type = TypeDir
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = TypeSymlink
	default:
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = st.Uid, st.Gid
		e.Ino, e.Dev = st.Ino, st.Dev
		e.CtimeNs = st.Ctim.Nano()
	}
	return e
}

// Lstat returns the entry for name (nil, nil for unreplicated types). Symlink
// targets are read; file hashes are not computed.
func Lstat(root *os.Root, name string) (*Entry, error) {
	fi, err := root.Lstat(name)
	if err != nil {
		return nil, err
	}
	e := FromInfo(name, fi)
	if e != nil && e.Type == TypeSymlink {
		if e.Target, err = root.Readlink(name); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Unchanged reports whether a cached file entry can be trusted without
// rereading: same inode, size, mtime and ctime.
func Unchanged(cached, now *Entry) bool {
	return cached != nil && cached.Type == now.Type && cached.Ino == now.Ino && cached.Dev == now.Dev &&
		cached.Size == now.Size && cached.MtimeNs == now.MtimeNs && cached.CtimeNs == now.CtimeNs
}

// HashFile fills e.Hashes (and e.Size, from what was actually read) from an
// opened file. buf is scratch space, reused across calls.
func HashFile(f *os.File, e *Entry, buf []byte) error {
	if len(buf) < BlockSize {
		buf = make([]byte, 256*BlockSize)
	}
	buf = buf[:len(buf)/BlockSize*BlockSize]
	hashes := make([]uint64, 0, Blocks(e.Size))
	var size int64
	for {
		n, err := io.ReadFull(f, buf)
		for off := 0; off < n; off += BlockSize {
			end := min(off+BlockSize, n)
			hashes = append(hashes, xxh3.Hash(buf[off:end]))
		}
		size += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	e.Hashes, e.Size = hashes, size
	return nil
}

// HashEntry opens name (without following a final symlink) and hashes it.
func HashEntry(root *os.Root, e *Entry, buf []byte) error {
	f, err := root.OpenFile(e.Path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return HashFile(f, e, buf)
}

// ScanOptions tune Scan.
type ScanOptions struct {
	// Prev is a previous scan; files it holds unchanged are not reread.
	Prev map[string]*Entry
	// OnError is told about names that could not be read; they are kept in
	// the result as TypeUnreadable (files) or skipped (directories).
	OnError func(name string, err error)
	// Under limits the scan to one subtree ("" for everything).
	Under string
	// OnSkip is told about names that cannot be replicated (ValidName
	// refuses them, e.g. longer than MaxNameLen); they are left out of the
	// result, and so is what is below them.
	OnSkip func(name string, err error)
}

// Scan walks the tree below root without following symlinks and returns
// every replicated entry by name, files hashed.
func Scan(ctx context.Context, root *os.Root, opt ScanOptions) (map[string]*Entry, error) {
	out := make(map[string]*Entry)
	buf := make([]byte, 256*BlockSize)
	onErr := opt.OnError
	if onErr == nil {
		onErr = func(string, error) {}
	}
	var walk func(dir string) error
	walk = func(dir string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		open := dir
		if open == "" {
			open = "."
		}
		d, err := root.Open(open)
		if err != nil {
			onErr(dir, err)
			return nil
		}
		ents, err := d.ReadDir(-1)
		d.Close()
		if err != nil {
			onErr(dir, err)
			return nil
		}
		sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
		for _, de := range ents {
			name := Join(dir, de.Name())
			if Excluded(name) {
				continue
			}
			if err := ValidName(name); err != nil {
				if opt.OnSkip != nil {
					opt.OnSkip(name, err)
				}
				continue
			}
			fi, err := de.Info()
			if err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					onErr(name, err)
				}
				continue
			}
			e := FromInfo(name, fi)
			if e == nil {
				continue
			}
			switch e.Type {
			case TypeSymlink:
				if e.Target, err = root.Readlink(name); err != nil {
					onErr(name, err)
					continue
				}
			case TypeFile:
				if p := opt.Prev[name]; Unchanged(p, e) && p.Hashes != nil {
					e.Hashes = p.Hashes
				} else if err := HashEntry(root, e, buf); err != nil {
					if errors.Is(err, fs.ErrNotExist) {
						continue
					}
					onErr(name, err)
					e.Type, e.Hashes = TypeUnreadable, nil
				}
			}
			out[name] = e
			if e.Type == TypeDir {
				if err := walk(name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	start := opt.Under
	if start != "" {
		e, err := Lstat(root, start)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return out, nil
			}
			return nil, fmt.Errorf("scan %s: %w", start, err)
		}
		if e == nil {
			return out, nil
		}
		if e.Type == TypeFile {
			if err := HashEntry(root, e, buf); err != nil {
				onErr(start, err)
				e.Type = TypeUnreadable
			}
		}
		out[start] = e
		if e.Type != TypeDir {
			return out, nil
		}
	}
	if err := walk(start); err != nil {
		return nil, err
	}
	return out, nil
}
