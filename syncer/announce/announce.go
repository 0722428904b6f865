// Package announce carries the syncer's role to the driver that gates the app container: the
// syncer (Announcer) pushes its state as JSON lines over a unix socket in the allocation's
// shared directory, and the driver (Gate) runs the app only while the last state says master
// and its deadline has not passed — and stops it when the syncer goes silent, even if the
// syncer is frozen and cannot say anything.
//
// Deadlines never cross the socket as instants: the sender writes the time left and its wall
// time, and the receiver turns that into an instant on its own monotonic clock at receipt,
// subtracting the message's time in transit. A wall-clock step can only make a deadline
// earlier, never later, except a backward step, whose effect is bounded by the heartbeat
// period because every heartbeat carries a fresh time-left.
package announce

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// SocketName is the socket's file name inside the allocation's alloc/tmp directory.
//
// alloc/tmp, not alloc/data: alloc/data is the replicated data directory and the app
// container's mount; a socket there would be seen by the replicator's watcher (and cannot be
// copied), and the app could reach or delete it. alloc/tmp is shared by every task of the
// allocation (so the syncer task and the driver both reach it), is not replicated, is not
// mounted into the app container, and disappears with the allocation.
const SocketName = "bedrock-role.sock"

// SocketPath returns the socket path for an allocation directory (NOMAD_ALLOC_DIR's parent,
// i.e. the directory holding alloc/ and the task directories).
func SocketPath(allocDir string) string {
	return filepath.Join(allocDir, "alloc", "tmp", SocketName)
}

// Version is the protocol version carried by every message; a receiver rejects other major
// versions rather than misread a deadline.
const Version = 1

// MaxLine bounds one JSON line; a longer one ends the connection.
const MaxLine = 64 << 10

// announced tells whether r is one of the roles the protocol carries (unknown, candidate,
// clone, master): a receiver rejects any other rather than guess what it lets the app do.
func announced(r core.Role) bool {
	switch r {
	case core.RoleUnknown, core.RoleCandidate, core.RoleClone, core.RoleMaster:
		return true
	}
	return false
}

// State is what the syncer announces.
type State struct {
	// Role is the syncer's role.
	Role core.Role
	// Term is the election term (the lock's LockIndex) the role belongs to.
	Term uint64
	// Position is the local copy's replication position.
	Position core.Position
	// CaughtUp tells whether the local copy follows the live stream (initial sync done).
	CaughtUp bool
	// Deadline is the instant, on the holder's monotonic clock, until which the app may run.
	// On the Announcer side it is the lease's deadline; on the Gate side it was converted at
	// receipt. Zero unless Role is master.
	Deadline time.Time
	// MasterAddr is where the master's syncer listens (informative for clones).
	MasterAddr string
	// Lag is, on a clone that follows a master, how many operations its copy is behind the
	// master's head as last heard (0: caught up). Meaningful only once CaughtUp (the initial
	// sync done); zero otherwise.
	Lag uint64
	// Progress is the initial sync's progress (nil when not syncing).
	Progress *core.Progress
	// Message is a human sentence for task events ("promoted to master at term 7").
	Message string
	// Notice is a standing warning about how the syncer runs (e.g. "Consul refused the 3s
	// session TTL ..."), told once as a task event; it survives every Set (SetNotice).
	Notice string
}

// The syncer's warnings a clone announces as its Message, which the driver tells as task events
// (its routine messages, "following ..." and the like, it does not: the role and the lag say it).
const (
	// MsgNotReceiving starts the warning of a clone that hears nothing from its master.
	MsgNotReceiving = "not receiving from the master"
	// MsgReceivingAgain is announced when it hears from it again.
	MsgReceivingAgain = "receiving from the master again"
	// MsgStalled starts the warning that no candidate holds what the last master published:
	// the group waits rather than promote stale data.
	MsgStalled = "no master can be elected without losing data: "
	// MsgNotPromotable starts the warning that this instance may not be promoted, and why.
	MsgNotPromotable = "not promotable: "
)

// Warning tells whether msg is one of the syncer's warnings (see MsgNotReceiving).
func Warning(msg string) bool {
	for _, p := range []string{MsgNotReceiving, MsgReceivingAgain, MsgStalled, MsgNotPromotable} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// message is one JSON line. Every message carries the full state: a heartbeat is the latest
// state resent, so a receiver that lost anything is whole again at the next line.
type message struct {
	V          int            `json:"v"`
	Seq        uint64         `json:"seq"`           // per connection, +1 per line
	Version    uint64         `json:"state_version"` // +1 per Set: what a gate's report refers to
	SentAt     time.Time      `json:"sent_at"`
	Role       core.Role      `json:"role"`
	Term       uint64         `json:"term"`
	Position   core.Position  `json:"position"`
	CaughtUp   bool           `json:"caught_up"`
	DeadlineIn int64          `json:"deadline_in_ns"` // time left at SentAt; 0: no deadline
	MasterAddr string         `json:"master_addr,omitempty"`
	Lag        uint64         `json:"lag,omitempty"` // added in v1 without a version bump: older receivers ignore it
	Progress   *core.Progress `json:"progress,omitempty"`
	Message    string         `json:"message,omitempty"`
	Notice     string         `json:"notice,omitempty"` // added in v1 without a version bump: older receivers ignore it
}

// report is a line from a gate to the announcer: whether the app runs, as of a state version.
// It lets a syncer that stepped down know when the app has really stopped (to send its last
// changes and release the lock at once) instead of waiting out its deadline.
//
// AppFailed says the app ended by itself while this instance was master (a crash, an OOM
// kill): its container is stopped, so the syncer may hand over at once, and it should not
// take the lock again until the app task is back (a gate that connects and reports without
// the flag). Added in v1 without a version bump: older announcers ignore it.
type report struct {
	V          int    `json:"v"`
	Version    uint64 `json:"state_version"`
	AppRunning bool   `json:"app_running"`
	AppFailed  bool   `json:"app_failed,omitempty"`
}

// encode builds the line for s at now (now carries both clocks: wall for SentAt, monotonic
// for the time left).
func encode(s State, seq, version uint64, now time.Time) ([]byte, error) {
	m := message{V: Version, Seq: seq, Version: version, SentAt: now.Round(0), Role: s.Role, Term: s.Term, Position: s.Position,
		CaughtUp: s.CaughtUp, MasterAddr: s.MasterAddr, Lag: s.Lag, Progress: s.Progress, Message: s.Message, Notice: s.Notice}
	if m.Role == "" {
		m.Role = core.RoleUnknown
	}
	if !s.Deadline.IsZero() {
		// a past deadline is sent as 1ns left, not 0, so that "master, expired" stays
		// distinguishable from "no deadline"; the gate is closed either way
		m.DeadlineIn = max(int64(s.Deadline.Sub(now)), 1)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("announce: encode state: %w", err)
	}
	return append(b, '\n'), nil
}

// decoded is a received state line.
type decoded struct {
	state   State
	seq     uint64
	version uint64
}

// decode parses one line received at recv and converts its deadline to recv's clock.
func decode(line []byte, recv time.Time) (decoded, error) {
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return decoded{}, fmt.Errorf("announce: malformed message: %w", err)
	}
	if m.V != Version {
		return decoded{}, fmt.Errorf("announce: protocol version %d, want %d", m.V, Version)
	}
	if !announced(m.Role) {
		return decoded{}, fmt.Errorf("announce: unknown role %q", m.Role)
	}
	if m.DeadlineIn < 0 {
		return decoded{}, errors.New("announce: negative deadline")
	}
	s := State{Role: m.Role, Term: m.Term, Position: m.Position, CaughtUp: m.CaughtUp,
		MasterAddr: m.MasterAddr, Lag: m.Lag, Progress: m.Progress, Message: m.Message, Notice: m.Notice}
	if m.DeadlineIn > 0 {
		// Time in transit by the shared wall clock (same host). A negative transit means the
		// wall clock stepped back: count it as zero (the heartbeat bounds the error).
		transit := max(recv.Round(0).Sub(m.SentAt), 0)
		left := time.Duration(m.DeadlineIn) - transit
		if left <= time.Nanosecond {
			left = 0 // expired (sent as 1ns left): the deadline is now
		}
		s.Deadline = recv.Add(left)
	}
	return decoded{state: s, seq: m.Seq, version: m.Version}, nil
}
