// Package tree is the file-system side of replication: it names entries of a
// data directory, scans and hashes them into a manifest, and applies changes
// confined to the directory.
//
// Decisions:
//   - Files are cut into fixed 4 KiB blocks hashed with xxh3. Fixed blocks
//     (not rolling checksums) fit the workloads Bedrock targets: databases and
//     region files are modified in place at page granularity, so a 4 KiB page
//     write changes exactly one block and costs one block on the wire. Inserts
//     in the middle of a file resend its tail; such files are usually small.
//   - Every path that crosses the wire is checked by ValidName, and every
//     filesystem access on the receiving side goes through an os.Root, which
//     refuses to resolve a name outside the directory even through symlinks.
//   - Two top-level names are never replicated: StateDir (our own state and
//     temporary files, which must live on the same filesystem for atomic
//     renames) and LostFound (divergent data preserved aside, and the usual
//     ext4 lost+found of a mount root).
package tree

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// BlockSize is the unit of change detection and transfer.
const BlockSize = 4096

// StateDir and LostFound are top-level names excluded from replication.
const (
	StateDir  = ".bedrock"
	LostFound = "lost+found"
	TmpDir    = StateDir + "/tmp"
)

// MaxNameLen bounds a wire name (Linux PATH_MAX). A deeper name exists
// only below directories reached by relative paths; it is not replicated
// (the master reports it, see ScanOptions.OnSkip).
const MaxNameLen = 4096

// ErrBadName reports a name that could escape the tree or is not canonical.
var ErrBadName = errors.New("invalid path name")

// ValidName accepts the names Linux allows inside the tree, and only
// those: canonical relative slash-separated names, any bytes in a
// component but "/" and NUL (backslashes, newlines and invalid UTF-8
// included: an app may write them, and a name the clone refused would stop
// replication for the whole group), no "." or ".." components, no empty
// components, no absolute paths. The root itself is never named on the
// wire. Names are confined further on the receiving side by os.Root,
// which refuses to resolve anything outside the directory, symlinks
// included.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	if name[0] == '/' || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == "" || c == "." || c == ".." || len(c) > MaxComponentLen {
			return fmt.Errorf("%w: %q", ErrBadName, name)
		}
	}
	return nil
}

// MaxComponentLen is Linux's NAME_MAX.
const MaxComponentLen = 255

// Excluded reports whether a (valid) name is outside replication.
func Excluded(name string) bool {
	top, _, _ := strings.Cut(name, "/")
	return top == StateDir || top == LostFound
}

// Parent returns the parent name, "" for top-level names.
func Parent(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ""
	}
	return name[:i]
}

// Join joins a directory name ("" for root) and a child.
func Join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// Depth is the number of components.
func Depth(name string) int { return strings.Count(name, "/") + 1 }

// Under reports whether name is dir or inside it.
func Under(name, dir string) bool {
	return name == dir || (len(name) > len(dir) && name[len(dir)] == '/' && strings.HasPrefix(name, dir))
}

// Type of an entry.
type Type uint8

// Entry types. Unreadable marks a file the master could not read: clones keep
// whatever they have instead of deleting it.
const (
	TypeFile Type = iota + 1
	TypeDir
	TypeSymlink
	TypeUnreadable
)

// ModeMask is the part of a mode that is replicated.
const ModeMask = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// Entry describes one name. Entries stored in a manifest are never mutated;
// a change replaces the entry, so snapshots can share them.
type Entry struct {
	Path    string
	Type    Type
	Mode    fs.FileMode // ModeMask bits only
	Size    int64
	MtimeNs int64
	UID     uint32
	GID     uint32
	Target  string   // symlinks
	Hashes  []uint64 // files: one per block

	// Local only, not sent: used to detect changes and renames.
	Ino     uint64
	Dev     uint64
	CtimeNs int64
}

// Blocks is the number of blocks of a file of size n.
func Blocks(n int64) int64 { return (n + BlockSize - 1) / BlockSize }

// SameMeta compares what a clone must reproduce besides content.
func SameMeta(a, b *Entry, owners bool) bool {
	if a.Type != b.Type || a.Mode != b.Mode {
		return false
	}
	if owners && (a.UID != b.UID || a.GID != b.GID) {
		return false
	}
	if a.Type == TypeSymlink {
		return a.Target == b.Target
	}
	return a.MtimeNs == b.MtimeNs
}

// SameContent reports whether two file entries hold identical blocks.
func SameContent(a, b *Entry) bool {
	if a.Size != b.Size || len(a.Hashes) != len(b.Hashes) {
		return false
	}
	for i := range a.Hashes {
		if a.Hashes[i] != b.Hashes[i] {
			return false
		}
	}
	return true
}
