package capture

import (
	"fmt"
	"sync"
)

// Kind names a journaled operation.
type Kind uint8

// The journaled operations. Every one that changes the tree names its
// paths as they were at the moment of the op (see the package comment);
// markers (OpFsync, OpFlush) change nothing and tell the clone where the
// app asked for durability.
const (
	OpWrite     Kind = iota + 1 // Data at Off into Path
	OpTruncate                  // Path to Size bytes
	OpCreate                    // regular file Path with Mode/Uid/Gid; Flags&CreateTrunc: O_TRUNC if it existed
	OpMkdir                     // directory Path with Mode/Uid/Gid
	OpMknod                     // device, FIFO or socket Path with Mode (type bits included), Rdev, Uid/Gid
	OpSymlink                   // symlink Path -> Target, owned by Uid/Gid
	OpLink                      // hard link: new name To for the existing Path
	OpUnlink                    // remove the non-directory Path
	OpRmdir                     // remove the empty directory Path
	OpRename                    // rename Path to To with renameat2 Flags (RENAME_NOREPLACE, RENAME_EXCHANGE)
	OpSetattr                   // set the attributes named by Set (mode, owner, times) on Path
	OpFallocate                 // fallocate(Path, Flags=mode, Off, Size=length)
	OpFsync                     // marker: the app fsynced Path (Flags&FsyncData: fdatasync); everything journaled before is durable on the master
	OpFlush                     // marker: the app closed a descriptor of Path (close(2)); not a durability point
)

var kindNames = [...]string{
	OpWrite: "write", OpTruncate: "truncate", OpCreate: "create", OpMkdir: "mkdir", OpMknod: "mknod",
	OpSymlink: "symlink", OpLink: "link", OpUnlink: "unlink", OpRmdir: "rmdir", OpRename: "rename",
	OpSetattr: "setattr", OpFallocate: "fallocate", OpFsync: "fsync", OpFlush: "flush",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Flags of OpCreate and OpFsync.
const (
	CreateTrunc = 1 // OpCreate: the file was opened with O_TRUNC, so an existing one is emptied
	FsyncData   = 1 // OpFsync: fdatasync (only the data and the size need be durable)
	FsyncDir    = 2 // OpFsync: the fsync was on a directory (its entries are durable)
)

// SetMask says which attributes an OpSetattr sets.
type SetMask uint8

// The attributes of an OpSetattr.
const (
	SetMode SetMask = 1 << iota
	SetUID
	SetGID
	SetAtime
	SetMtime
)

// Op is one mutating operation in the order the master applied it.
//
// Data is borrowed: it points into the FUSE request buffer and is valid
// only during Journal.Append. A journal that keeps it must copy it (the
// memory journal does; a journal that writes it to a socket or a file
// needs no copy of its own: that is the zero-copy path).
type Op struct {
	Kind   Kind
	Path   string // slash-separated, relative to the root of the mount; "" is the root itself
	To     string // OpRename: the new name; OpLink: the new link
	Target string // OpSymlink: the link's content
	Off    int64  // OpWrite, OpFallocate
	Size   int64  // OpTruncate: new size; OpFallocate: length
	Data   []byte // OpWrite (borrowed, see above)
	Mode   uint32 // create ops: type and permission bits; OpSetattr: permission bits
	UID    uint32
	GID    uint32
	Rdev   uint64 // OpMknod
	Flags  uint32 // OpRename: renameat2 flags; OpFallocate: mode; OpCreate, OpFsync: see the constants
	Set    SetMask
	Atime  int64 // OpSetattr with SetAtime: nanoseconds since the epoch
	Mtime  int64 // OpSetattr with SetMtime
}

func (o Op) String() string {
	switch o.Kind {
	case OpWrite:
		return fmt.Sprintf("write %q @%d +%d", o.Path, o.Off, len(o.Data))
	case OpTruncate:
		return fmt.Sprintf("truncate %q %d", o.Path, o.Size)
	case OpRename:
		return fmt.Sprintf("rename %q -> %q flags=%d", o.Path, o.To, o.Flags)
	case OpLink:
		return fmt.Sprintf("link %q -> %q", o.Path, o.To)
	case OpSymlink:
		return fmt.Sprintf("symlink %q -> %q", o.Path, o.Target)
	case OpSetattr:
		return fmt.Sprintf("setattr %q set=%b mode=%o", o.Path, o.Set, o.Mode)
	default:
		return fmt.Sprintf("%s %q", o.Kind, o.Path)
	}
}

// Journal receives the ops in the order they became visible on the
// master. Append is called while the file system holds its ordering lock
// (see FS), so it must be quick and must not call back into the mount;
// the sequence it returns is the op's replication position.
type Journal interface {
	Append(op Op) (seq uint64)
}

// MemJournal keeps every op in memory, data copied. It is the reference
// journal for tests and the benchmark; safe for concurrent use.
//
// The data of writes is copied once, into large slabs the journal owns
// (not into one fresh allocation per op): a fresh allocation of a 1 MiB
// write costs the runtime a clear and the kernel 256 page faults, more
// than the copy itself, and that cost sits inside the app's write(2).
// Reset recycles the slabs of the ops it drops.
type MemJournal struct {
	mu  sync.Mutex
	ops []Op
	// base is the sequence of ops[0] minus one: Reset drops the ops but
	// keeps counting, so positions never repeat.
	base uint64

	slab []byte   // the slab being filled: data goes at len(slab)
	used [][]byte // the slabs filled since the last Reset
	free [][]byte // slabs Reset recycled
}

const (
	// slabSize holds four of the largest WRITE requests.
	slabSize = 4 << 20
	// maxFreeSlabs bounds what a journal keeps for reuse after a Reset.
	maxFreeSlabs = 8
)

// Append copies op (its data included) and returns its sequence, 1-based.
func (j *MemJournal) Append(op Op) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if op.Data != nil {
		op.Data = j.copyData(op.Data)
	}
	j.ops = append(j.ops, op)
	return j.base + uint64(len(j.ops))
}

// copyData copies d into the current slab (mu held).
func (j *MemJournal) copyData(d []byte) []byte {
	if len(d) > slabSize {
		b := make([]byte, len(d))
		copy(b, d)
		return b
	}
	if cap(j.slab)-len(j.slab) < len(d) {
		if j.slab != nil {
			j.used = append(j.used, j.slab)
		}
		if n := len(j.free); n > 0 {
			j.slab, j.free = j.free[n-1][:0], j.free[:n-1]
		} else {
			j.slab = make([]byte, 0, slabSize)
		}
	}
	off := len(j.slab)
	j.slab = append(j.slab, d...)
	return j.slab[off:len(j.slab):len(j.slab)]
}

// Len returns the sequence of the last op appended (0 before the first).
func (j *MemJournal) Len() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.base + uint64(len(j.ops))
}

// Ops returns the ops kept since the last Reset (a copy of the slice; the
// ops themselves are never modified). Their Data stays valid until the
// Reset that drops them: Reset reuses the memory.
func (j *MemJournal) Ops() []Op {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]Op(nil), j.ops...)
}

// Reset drops the kept ops (what a journal does once every clone has
// acknowledged them); sequences continue where they were.
func (j *MemJournal) Reset() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.base += uint64(len(j.ops))
	j.ops = nil
	for _, s := range j.used {
		if len(j.free) < maxFreeSlabs {
			j.free = append(j.free, s)
		}
	}
	j.used = nil
	if j.slab != nil {
		j.slab = j.slab[:0]
	}
}
