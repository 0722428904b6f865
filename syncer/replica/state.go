package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
)

// State is what a node remembers across restarts, in StateDir/state.json.
type State struct {
	// Term is the highest term seen; older terms are refused.
	Term uint64 `json:"term"`
	// Position is the last position applied (clone) or produced (master).
	Position core.Position `json:"position"`
	// Role is the role this node last held: master or clone.
	Role core.Role `json:"role"`
	// MasterTerm is the term in which this node was last master; a former
	// master moves its divergent data aside before it resyncs.
	MasterTerm uint64 `json:"master_term,omitempty"`
	// Synced is true once a clone completed an initial sync.
	Synced bool `json:"synced"`
}

// StateStore loads and saves State atomically under a data directory.
type StateStore struct {
	root *os.Root
	mu   sync.Mutex
	st   State
}

const stateFile = tree.StateDir + "/state.json"

// OpenState reads the state of the tree at root (empty state if none).
func OpenState(root *os.Root) (*StateStore, error) {
	s := &StateStore{root: root}
	if err := root.MkdirAll(tree.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	b, err := root.ReadFile(stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &s.st); err != nil {
		// A torn state file only loses the position hint: every start
		// verifies the data against the master anyway. The term is
		// re-learned from the master; fencing by term is also enforced by
		// the election, so start empty instead of refusing to run.
		s.st = State{}
	}
	return s, nil
}

// Get returns a copy of the state.
func (s *StateStore) Get() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// Update changes the state and writes it durably.
func (s *StateStore) Update(f func(*State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.st)
	b, err := json.Marshal(s.st)
	if err != nil {
		return err
	}
	tmp := stateFile + ".tmp"
	fh, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := unix.Fdatasync(int(fh.Fd())); err != nil {
		fh.Close()
		return fmt.Errorf("sync state: %w", err)
	}
	if err := fh.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := s.root.Rename(tmp, stateFile); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}
