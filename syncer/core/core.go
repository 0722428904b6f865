// Package core holds the few values every layer of the syncer speaks about — a replication
// Position, an initial sync's Progress, the role names and the role an election assigns — so
// that the election, the lease, the role announcements and the data path share one definition
// of each instead of converting between look-alike copies.
//
// It is a leaf: it imports only the standard library, and every syncer package may import it.
// The JSON field names are part of the announce protocol and of state.json: they must not
// change.
package core

import "fmt"

// Position is a replication position: every operation up to Seq of Term is applied. It travels
// as {"term":T,"seq":S} in role announcements, lock and candidacy values, and state.json.
type Position struct {
	Term uint64 `json:"term"`
	Seq  uint64 `json:"seq"`
}

// Less orders positions by term, then sequence: a later term supersedes any sequence of an
// earlier one, because a new master starts its history from the old one's acknowledged head.
func (p Position) Less(q Position) bool {
	return p.Term < q.Term || (p.Term == q.Term && p.Seq < q.Seq)
}

// AtLeast reports whether p is at or beyond q.
func (p Position) AtLeast(q Position) bool { return !p.Less(q) }

// String formats the position as term/seq for logs, errors and task events.
func (p Position) String() string { return fmt.Sprintf("%d/%d", p.Term, p.Seq) }

// Progress is an initial sync's progress, for task events, the service check and metrics.
type Progress struct {
	FilesTotal int64 `json:"files_total"`
	FilesDone  int64 `json:"files_done"`
	BytesTotal int64 `json:"bytes_total"`
	BytesDone  int64 `json:"bytes_done"`
	Done       bool  `json:"done"`
}

// Percent is how far the initial sync is, 0 to 100, by bytes (by files when there are no
// bytes to copy). It is 100 only when the sync is done or there is nothing to copy, so that a
// task event never says 100% while data is still missing.
func (p Progress) Percent() int {
	switch {
	case p.Done:
		return 100
	case p.BytesTotal > 0:
		return int(min(max(p.BytesDone, 0)*100/p.BytesTotal, 99))
	case p.FilesTotal > 0:
		return int(min(max(p.FilesDone, 0)*100/p.FilesTotal, 99))
	}
	return 100
}

// String formats the progress in files and bytes for task events and logs.
func (p Progress) String() string {
	return fmt.Sprintf("%d/%d files, %d/%d bytes", p.FilesDone, p.FilesTotal, p.BytesDone, p.BytesTotal)
}

// Role names what an instance is. The same names appear in role announcements (unknown,
// candidate, clone, master), in the syncer's status (master, clone, idle, fenced), in
// state.json (master, clone) and as the service's role tag (master, clone), so they are
// declared once here.
type Role string

// The role names.
const (
	// RoleUnknown: the syncer does not know yet (starting, or lost Consul).
	RoleUnknown Role = "unknown"
	// RoleCandidate: no master is known; this instance may be promoted.
	RoleCandidate Role = "candidate"
	// RoleClone: another instance is master; this one replicates from it.
	RoleClone Role = "clone"
	// RoleMaster: this instance holds the lock; its app may run until the deadline.
	RoleMaster Role = "master"
	// RoleIdle: the syncer's data path has no role yet (status only).
	RoleIdle Role = "idle"
	// RoleFenced: the data path saw a newer term than its own and stopped (status only).
	RoleFenced Role = "fenced"
)

// Assignment is the role an election gives this instance: what the data path should be. Term
// is the fencing token (the election lock's LockIndex); MasterAddr is where a clone finds the
// master; Base, on a clone, is the position the master started its term from (zero when
// unknown), so that the clone moves aside whatever its copy holds beyond it.
type Assignment struct {
	Master     bool
	Term       uint64
	MasterAddr string
	Base       Position
}

// Role names the assignment's data-path role: master or clone.
func (a Assignment) Role() Role {
	if a.Master {
		return RoleMaster
	}
	return RoleClone
}
