package capture

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FS is the loopback file system of one mount: every mutating op is
// applied to the backing directory and appended to the journal in one
// critical section of mu.
//
// Ordering: mu is one mutex per file system, held from the backing
// syscall to the end of Journal.Append. The journal order is therefore
// exactly the order in which the changes happened on the backing
// directory, for data and namespace ops alike, and the reply to the app
// (the end of its write(2), rename(2), ...) comes after the append: if a
// syscall returned before another started, its op has the smaller
// sequence. A per-inode lock would let writes to different files run in
// parallel, but then a write and a rename of its directory (or two
// renames) could reach the journal in another order than the backing
// directory saw them; a write costs a few microseconds under mu (a pwrite
// into the page cache and a copy), so on the 2-core machines Bedrock
// targets the single lock is not what limits throughput (the FUSE round
// trip is). fsync runs outside mu: it is slow, and its marker only needs
// to follow the ops it made durable, which it does because it is appended
// after the backing fsync returned.
//
// Paths: ops are journaled by their path at the time of the op, computed
// under mu from FS's own table of names (each node knows the (parent,
// name) links it is reachable by, updated in the same critical section
// as the backing rename/unlink). go-fuse's own tree is updated only after
// a node method returns, outside mu, so it cannot be used: a write racing
// with a rename of its directory would journal the old name after the
// rename. Journaling paths (not inode numbers) keeps the clone stateless:
// it applies ops to names, as a person replaying them by hand would.
// Writes to a file that has no name any more (unlinked while open) are
// applied but not journaled: no later state of the tree can show them.
type FS struct {
	root    string // absolute backing directory
	dev     uint64 // its device, mixed out of inode numbers like go-fuse's loopback does
	journal Journal
	barrier Barrier // journal.(Barrier), or nil
	opt     Options

	mu sync.Mutex
	// gen counts namespace changes that can move or drop a path; a node's
	// cached path is valid while its pathGen equals gen. Guarded by mu.
	gen      uint64
	rootNode *node
}

// Barrier is implemented by journals that can make the app wait until a
// position is durable elsewhere (sync replication: a quorum of clones has
// acknowledged it). fsync(2) through the mount returns only after
// WaitDurable(seq of its marker) returned; an error fails the fsync with
// EIO, which is what an app expects from a disk that lost its writes.
type Barrier interface {
	WaitDurable(ctx context.Context, seq uint64) error
}

// link is one name of a node: the entry name in directory parent.
type link struct {
	parent *node
	name   string
}

// node is our inode type. go-fuse keeps one per inode the kernel knows.
type node struct {
	gofs.Inode
	fsys *FS

	// Guarded by fsys.mu.
	links     []link // every name this inode is known by; empty: unlinked (or root)
	pathGen   uint64
	pathCache string
	pathOK    bool
}

var (
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeCreater        = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeMkdirer        = (*node)(nil)
	_ gofs.NodeMknoder        = (*node)(nil)
	_ gofs.NodeSymlinker      = (*node)(nil)
	_ gofs.NodeLinker         = (*node)(nil)
	_ gofs.NodeReadlinker     = (*node)(nil)
	_ gofs.NodeUnlinker       = (*node)(nil)
	_ gofs.NodeRmdirer        = (*node)(nil)
	_ gofs.NodeRenamer        = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
	_ gofs.NodeStatfser       = (*node)(nil)
	_ gofs.NodeFlusher        = (*node)(nil)
)

// relPath returns the node's current path relative to the root (mu held);
// ok is false for a node with no name (unlinked, or below one).
func (n *node) relPath() (string, bool) {
	if n == n.fsys.rootNode {
		return "", true
	}
	if n.pathOK && n.pathGen == n.fsys.gen {
		return n.pathCache, true
	}
	if len(n.links) == 0 {
		return "", false
	}
	l := n.links[0]
	pp, ok := l.parent.relPath()
	if !ok {
		return "", false
	}
	p := l.name
	if pp != "" {
		p = pp + "/" + l.name
	}
	n.pathCache, n.pathGen, n.pathOK = p, n.fsys.gen, true
	return p, true
}

// childPath is the relative path of name in directory n (mu held).
func (n *node) childPath(name string) (string, bool) {
	p, ok := n.relPath()
	if !ok {
		return "", false
	}
	if p == "" {
		return name, true
	}
	return p + "/" + name, true
}

func (f *FS) abs(rel string) string {
	if rel == "" {
		return f.root
	}
	return f.root + "/" + rel
}

// childAbs resolves name in n to a backing path (mu held).
func (n *node) childAbs(name string) (rel, abs string, errno syscall.Errno) {
	rel, ok := n.childPath(name)
	if !ok {
		return "", "", syscall.ENOENT
	}
	return rel, n.fsys.abs(rel), 0
}

func (n *node) addLink(parent *node, name string) {
	for _, l := range n.links {
		if l.parent == parent && l.name == name {
			return
		}
	}
	n.links = append(n.links, link{parent, name})
	n.pathOK = false
}

func (n *node) removeLink(parent *node, name string) {
	for i, l := range n.links {
		if l.parent == parent && l.name == name {
			n.links = append(n.links[:i], n.links[i+1:]...)
			n.pathOK = false
			return
		}
	}
}

// child returns our node for name in directory n, if the kernel knows it.
// The kernel holds the directory's lock during the op that calls this, so
// go-fuse's child table is current for this directory.
func (n *node) child(name string) *node {
	ch := n.GetChild(name)
	if ch == nil {
		return nil
	}
	c, _ := ch.Operations().(*node)
	return c
}

// newChild registers the inode just created or looked up as name in n and
// returns go-fuse's inode for it (mu held). go-fuse hands back the inode it
// already has when the kernel knows this inode by another name (a hard
// link), so the link is added to whichever node it returns.
func (n *node) newChild(ctx context.Context, name string, st *syscall.Stat_t, btime *syscall.Timespec) *gofs.Inode {
	ch := n.NewInode(ctx, &node{fsys: n.fsys}, n.fsys.stableAttr(st, btime))
	if c, ok := ch.Operations().(*node); ok {
		c.addLink(n, name)
	}
	return ch
}

func (f *FS) stableAttr(st *syscall.Stat_t, btime *syscall.Timespec) gofs.StableAttr {
	gen := uint64(1)
	if btime.Sec != 0 || btime.Nsec != 0 {
		gen = uint64(btime.Sec)*1e9 + uint64(btime.Nsec)
	}
	swapped := (st.Dev << 32) | (st.Dev >> 32)
	rootSwapped := (f.dev << 32) | (f.dev >> 32)
	return gofs.StableAttr{Mode: st.Mode, Gen: gen, Ino: (swapped ^ rootSwapped) ^ st.Ino}
}

// appendOp journals op (mu held) and returns its sequence.
func (f *FS) appendOp(op Op) uint64 { return f.journal.Append(op) }

// owner makes a new entry belong to the caller, as a kernel file system
// would; the server runs as root, so without it everything would be root's.
func owner(ctx context.Context) (uid, gid uint32, ok bool) {
	if unix.Geteuid() != 0 {
		return 0, 0, false
	}
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return 0, 0, false
	}
	return c.Uid, c.Gid, true
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	_, abs, errno := n.childAbs(name)
	if errno != 0 {
		return nil, errno
	}
	var st syscall.Stat_t
	var bt syscall.Timespec
	if err := statx(unix.AT_FDCWD, abs, unix.AT_SYMLINK_NOFOLLOW, &st, &bt); err != nil {
		return nil, gofs.ToErrno(err)
	}
	out.FromStat(&st)
	return n.newChild(ctx, name, &st, &bt), 0
}

func (n *node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := fh.(*file); ok && h != nil {
		return h.Getattr(ctx, out)
	}
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, ok := n.relPath()
	if !ok {
		return syscall.ENOENT
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(f.abs(rel), &st); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStat(&st)
	return 0
}

func (n *node) Statfs(_ context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Statfs(n.fsys.root, &s); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStatfsT(&s)
	return 0
}

func (n *node) Readlink(context.Context) ([]byte, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	rel, ok := n.relPath()
	abs := f.abs(rel)
	f.mu.Unlock()
	if !ok {
		return nil, syscall.ENOENT
	}
	for l := 256; ; l *= 2 {
		buf := make([]byte, l)
		sz, err := unix.Readlink(abs, buf)
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
		if sz < len(buf) {
			return buf[:sz], 0
		}
	}
}

// openFlags removes what the backing open must not see: O_APPEND (the
// kernel sends explicit offsets, and pwrite on an O_APPEND descriptor
// would ignore them), FMODE_EXEC, and the create flags.
func (f *FS) openFlags(flags uint32) int {
	fl := int(flags) &^ (syscall.O_APPEND | fuse.FMODE_EXEC | syscall.O_CREAT | syscall.O_EXCL | syscall.O_NOCTTY)
	if f.opt.Writeback && fl&syscall.O_ACCMODE == syscall.O_WRONLY {
		// The kernel reads pages back to merge partial writes.
		fl = fl&^syscall.O_ACCMODE | syscall.O_RDWR
	}
	return fl | syscall.O_CLOEXEC
}

// openOut says how the kernel may cache an open file.
//
// Write-only opens are direct I/O (FOPEN_DIRECT_IO): the kernel hands the
// app's buffer straight to the WRITE request instead of first copying it
// into the mount's page cache (a copy and a page allocation per 4 KiB in
// the app's write(2), and a second copy of the data in memory), and it
// sends a write(2) as one request instead of cutting it at the first
// partial page it has not cached. A write-only descriptor cannot be read
// or mapped, so nothing the app does through it wanted that cache; the
// kernel drops the cached pages of a range it writes directly, so other
// descriptors of the file (cached ones, or a mapping) still read what was
// written (TestDirectWriteCoherence). Opens that can read keep the page
// cache: making them direct would send every read(2), however small, to
// the server.
func (f *FS) openOut(flags uint32) uint32 {
	var out uint32
	if !f.opt.Legacy && !f.opt.Writeback && flags&syscall.O_ACCMODE == syscall.O_WRONLY {
		out |= fuse.FOPEN_DIRECT_IO
	}
	if f.opt.NoKeepCache {
		return out
	}
	// Nothing but this mount changes the backing directory, so the page
	// cache of a file stays valid across opens.
	return out | fuse.FOPEN_KEEP_CACHE
}

func (n *node) Open(_ context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, ok := n.relPath()
	if !ok {
		return nil, 0, syscall.ENOENT
	}
	fd, err := syscall.Open(f.abs(rel), f.openFlags(flags)|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, 0, gofs.ToErrno(err)
	}
	if flags&syscall.O_TRUNC != 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		// The kernel usually truncates with a SETATTR first, but an open
		// that truncates is a change all the same.
		f.appendOp(Op{Kind: OpTruncate, Path: rel})
	}
	return &file{n: n, fd: fd}, f.openOut(flags), 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, abs, errno := n.childAbs(name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	fl := f.openFlags(flags) | syscall.O_CREAT | int(flags)&syscall.O_EXCL | syscall.O_NOFOLLOW
	fd, err := syscall.Open(abs, fl, mode)
	if err != nil {
		return nil, nil, 0, gofs.ToErrno(err)
	}
	if uid, gid, ok := owner(ctx); ok {
		_ = syscall.Fchown(fd, int(uid), int(gid))
	}
	var st syscall.Stat_t
	var bt syscall.Timespec
	if err := statx(fd, "", unix.AT_EMPTY_PATH, &st, &bt); err != nil {
		syscall.Close(fd)
		return nil, nil, 0, gofs.ToErrno(err)
	}
	op := Op{Kind: OpCreate, Path: rel, Mode: st.Mode, UID: st.Uid, GID: st.Gid}
	if flags&syscall.O_TRUNC != 0 {
		op.Flags |= CreateTrunc
	}
	f.appendOp(op)
	out.FromStat(&st)
	ch := n.newChild(ctx, name, &st, &bt)
	cn, _ := ch.Operations().(*node)
	return ch, &file{n: cn, fd: fd}, f.openOut(flags), 0
}

// mkentry is the common tail of Mkdir, Mknod and Symlink (mu held): owner,
// stat, journal, inode.
func (n *node) mkentry(ctx context.Context, name, rel, abs string, op Op, out *fuse.EntryOut, undo func() error) (*gofs.Inode, syscall.Errno) {
	if uid, gid, ok := owner(ctx); ok {
		_ = unix.Lchown(abs, int(uid), int(gid))
	}
	var st syscall.Stat_t
	var bt syscall.Timespec
	if err := statx(unix.AT_FDCWD, abs, unix.AT_SYMLINK_NOFOLLOW, &st, &bt); err != nil {
		_ = undo()
		return nil, gofs.ToErrno(err)
	}
	op.Path, op.Mode, op.UID, op.GID = rel, st.Mode, st.Uid, st.Gid
	n.fsys.appendOp(op)
	out.FromStat(&st)
	return n.newChild(ctx, name, &st, &bt), 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, abs, errno := n.childAbs(name)
	if errno != 0 {
		return nil, errno
	}
	if err := syscall.Mkdir(abs, mode); err != nil {
		return nil, gofs.ToErrno(err)
	}
	return n.mkentry(ctx, name, rel, abs, Op{Kind: OpMkdir}, out, func() error { return syscall.Rmdir(abs) })
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, abs, errno := n.childAbs(name)
	if errno != 0 {
		return nil, errno
	}
	if err := syscall.Mknod(abs, mode, int(rdev)); err != nil {
		return nil, gofs.ToErrno(err)
	}
	return n.mkentry(ctx, name, rel, abs, Op{Kind: OpMknod, Rdev: uint64(rdev)}, out, func() error { return syscall.Unlink(abs) })
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, abs, errno := n.childAbs(name)
	if errno != 0 {
		return nil, errno
	}
	if err := syscall.Symlink(target, abs); err != nil {
		return nil, gofs.ToErrno(err)
	}
	return n.mkentry(ctx, name, rel, abs, Op{Kind: OpSymlink, Target: target}, out, func() error { return syscall.Unlink(abs) })
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok || t.fsys != n.fsys {
		return nil, syscall.EXDEV
	}
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	from, ok := t.relPath()
	if !ok {
		// A file with no name (O_TMPFILE, or unlinked): LINK carries no
		// descriptor, so there is nothing to link from.
		return nil, syscall.ENOENT
	}
	rel, abs, errno := n.childAbs(name)
	if errno != 0 {
		return nil, errno
	}
	if err := syscall.Link(f.abs(from), abs); err != nil {
		return nil, gofs.ToErrno(err)
	}
	var st syscall.Stat_t
	var bt syscall.Timespec
	if err := statx(unix.AT_FDCWD, abs, unix.AT_SYMLINK_NOFOLLOW, &st, &bt); err != nil {
		_ = syscall.Unlink(abs)
		return nil, gofs.ToErrno(err)
	}
	f.appendOp(Op{Kind: OpLink, Path: from, To: rel})
	out.FromStat(&st)
	return n.newChild(ctx, name, &st, &bt), 0
}

// remove is Unlink and Rmdir.
func (n *node) remove(name string, kind Kind, rm func(string) error) syscall.Errno {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, abs, errno := n.childAbs(name)
	if errno != 0 {
		return errno
	}
	if err := rm(abs); err != nil {
		return gofs.ToErrno(err)
	}
	if c := n.child(name); c != nil {
		c.removeLink(n, name)
	}
	f.gen++
	f.appendOp(Op{Kind: kind, Path: rel})
	return 0
}

func (n *node) Unlink(_ context.Context, name string) syscall.Errno {
	return n.remove(name, OpUnlink, syscall.Unlink)
}

func (n *node) Rmdir(_ context.Context, name string) syscall.Errno {
	return n.remove(name, OpRmdir, syscall.Rmdir)
}

func (n *node) Rename(_ context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok || np.fsys != n.fsys {
		return syscall.EXDEV
	}
	if flags&^uint32(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		// RENAME_WHITEOUT is for overlayfs; nothing an app does.
		return syscall.EINVAL
	}
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	from, fromAbs, errno := n.childAbs(name)
	if errno != 0 {
		return errno
	}
	to, toAbs, errno := np.childAbs(newName)
	if errno != 0 {
		return errno
	}
	if err := unix.Renameat2(unix.AT_FDCWD, fromAbs, unix.AT_FDCWD, toAbs, uint(flags)); err != nil {
		return gofs.ToErrno(err)
	}
	moved, victim := n.child(name), np.child(newName)
	switch {
	case moved != nil && moved == victim:
		// Two links of one inode: rename(2) does nothing.
	case flags&unix.RENAME_EXCHANGE != 0:
		if moved != nil {
			moved.removeLink(n, name)
			moved.addLink(np, newName)
		}
		if victim != nil {
			victim.removeLink(np, newName)
			victim.addLink(n, name)
		}
	default:
		if victim != nil {
			victim.removeLink(np, newName)
		}
		if moved != nil {
			moved.removeLink(n, name)
			moved.addLink(np, newName)
		}
	}
	f.gen++
	f.appendOp(Op{Kind: OpRename, Path: from, To: to, Flags: flags})
	return 0
}

func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f := n.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	rel, named := n.relPath()
	h, _ := fh.(*file)
	if h == nil && !named {
		return syscall.ENOENT
	}
	abs := f.abs(rel)
	var set SetMask
	if m, ok := in.GetMode(); ok {
		var err error
		if h != nil {
			err = syscall.Fchmod(h.fd, m)
		} else {
			err = syscall.Chmod(abs, m)
		}
		if err != nil {
			return gofs.ToErrno(err)
		}
		set |= SetMode
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
			set |= SetUID
		}
		if gok {
			g = int(gid)
			set |= SetGID
		}
		var err error
		if h != nil {
			err = syscall.Fchown(h.fd, u, g)
		} else {
			err = unix.Fchownat(unix.AT_FDCWD, abs, u, g, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			return gofs.ToErrno(err)
		}
	}
	// Truncate before setting times, so an explicit mtime is not
	// clobbered by the truncate.
	sz, szok := in.GetSize()
	if szok {
		var err error
		if h != nil {
			err = syscall.Ftruncate(h.fd, int64(sz))
		} else {
			err = syscall.Truncate(abs, int64(sz))
		}
		if err != nil {
			return gofs.ToErrno(err)
		}
		if named {
			f.appendOp(Op{Kind: OpTruncate, Path: rel, Size: int64(sz)})
		}
	}
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if mok || aok {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
			set |= SetAtime
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
			set |= SetMtime
		}
		var err error
		if h != nil {
			err = unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+itoa(h.fd), ts, 0)
		} else {
			err = unix.UtimesNanoAt(unix.AT_FDCWD, abs, ts, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			return gofs.ToErrno(err)
		}
	}
	var st syscall.Stat_t
	var err error
	if h != nil {
		err = syscall.Fstat(h.fd, &st)
	} else {
		err = syscall.Lstat(abs, &st)
	}
	if err != nil {
		return gofs.ToErrno(err)
	}
	if set != 0 && named {
		// The values that took effect (a time set to "now" included).
		f.appendOp(Op{
			Kind: OpSetattr, Path: rel, Set: set, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid,
			Atime: st.Atim.Nano(), Mtime: st.Mtim.Nano(),
		})
	}
	out.FromStat(&st)
	return 0
}

// Flush is close(2) of one descriptor. Without JournalFlush it answers
// ENOSYS, and the kernel then stops sending FLUSH at all: one round trip
// less per close. Write errors reach the app at write(2) anyway (the
// backing write is synchronous), so flush has nothing to report.
func (n *node) Flush(_ context.Context, _ gofs.FileHandle) syscall.Errno {
	f := n.fsys
	if !f.opt.JournalFlush {
		return syscall.ENOSYS
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if rel, ok := n.relPath(); ok {
		f.appendOp(Op{Kind: OpFlush, Path: rel})
	}
	return 0
}

func (n *node) OpendirHandle(_ context.Context, _ uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	f := n.fsys
	f.mu.Lock()
	rel, ok := n.relPath()
	var fd int
	var err error
	if ok {
		fd, err = syscall.Open(f.abs(rel), syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	}
	f.mu.Unlock()
	if !ok {
		return nil, 0, syscall.ENOENT
	}
	if err != nil {
		return nil, 0, gofs.ToErrno(err)
	}
	ds, errno := gofs.NewLoopbackDirStreamFd(fd)
	if errno != 0 {
		syscall.Close(fd)
		return nil, 0, errno
	}
	return &dir{n: n, ds: ds}, 0, 0
}

// fsynced journals an fsync marker for n after the backing fsync
// returned, then waits for the journal's barrier (sync replication).
func (f *FS) fsynced(ctx context.Context, n *node, flags uint32) syscall.Errno {
	f.mu.Lock()
	rel, ok := n.relPath()
	var seq uint64
	if ok {
		seq = f.appendOp(Op{Kind: OpFsync, Path: rel, Flags: flags})
	}
	f.mu.Unlock()
	if ok && f.barrier != nil {
		// Not the request's context: the kernel interrupts a FUSE request whenever the
		// caller's thread takes a signal (a Go runtime's preemption, a JVM's safepoint), and
		// an fsync that failed for that would be an fsync a disk never fails. The barrier has
		// its own timeout; a caller killed meanwhile is answered by nobody.
		if err := f.barrier.WaitDurable(context.WithoutCancel(ctx), seq); err != nil {
			return syscall.EIO
		}
	}
	return 0
}

// dir is an open directory: go-fuse's loopback stream, plus a journaled
// fsync (apps fsync a directory to make a create or rename durable).
type dir struct {
	n  *node
	ds gofs.DirStream
}

var (
	_ gofs.FileReaddirenter = (*dir)(nil)
	_ gofs.FileSeekdirer    = (*dir)(nil)
	_ gofs.FileReleasedirer = (*dir)(nil)
	_ gofs.FileFsyncdirer   = (*dir)(nil)
)

func (d *dir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if r, ok := d.ds.(gofs.FileReaddirenter); ok {
		return r.Readdirent(ctx)
	}
	if !d.ds.HasNext() {
		return nil, 0
	}
	e, errno := d.ds.Next()
	return &e, errno
}

func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if s, ok := d.ds.(gofs.FileSeekdirer); ok {
		return s.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

func (d *dir) Releasedir(ctx context.Context, flags uint32) {
	if r, ok := d.ds.(gofs.FileReleasedirer); ok {
		r.Releasedir(ctx, flags)
		return
	}
	d.ds.Close()
}

func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	s, ok := d.ds.(gofs.FileFsyncdirer)
	if !ok {
		return syscall.ENOTSUP
	}
	if errno := s.Fsyncdir(ctx, flags); errno != 0 {
		return errno
	}
	return d.n.fsys.fsynced(ctx, d.n, FsyncDir)
}

// errUnusable is returned by Mount when the kernel refuses FUSE.
var errUnusable = errors.New("FUSE is not usable here")

func absDir(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.Clean(a), nil
}
