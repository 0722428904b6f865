package replica

import (
	"errors"
	"fmt"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// The clone's side of capture mode (journal.go): the cut-over, then the journal applied in
// order.

// watcherOp tells the frame types of the watcher's stream, which a journal clone never gets.
func watcherOp(t wire.Type) bool {
	switch t {
	case wire.TFileBegin, wire.TFileData, wire.TFileEnd, wire.TFileGone, wire.TMkdir, wire.TMeta,
		wire.TSymlink, wire.TDelete, wire.TRename:
		return true
	}
	return false
}

// cutOver: the copy equals the master's directory at f.Seq (the master saw every operation
// up to it acknowledged, with the app's writes paused). It is made durable and recorded as
// synced at that position before the clone says anything more; from here the journal
// follows.
func (s *session) cutOver(f wire.Frame) error {
	c := s.c
	if !c.cfg.Capture || c.rp == nil {
		return errors.New("master cut this clone over to a journal, but this group is not in a capture mode")
	}
	if err := c.ap.Sync(); err != nil {
		return applyError{err}
	}
	pos := core.Position{Term: s.term, Seq: f.Seq}
	if err := c.cfg.State.Update(func(st *State) {
		st.Position, st.Synced, st.Role = pos, true, core.RoleClone
	}); err != nil {
		return applyError{err}
	}
	c.mu.Lock()
	c.journal = true
	c.st.Synced = true
	c.recorded = pos
	c.mu.Unlock()
	c.log.Info("following the master's journal", "term", s.term, "seq", f.Seq)
	return nil
}

// applyJournal applies one journaled operation. Our own top-level names never come from the
// wire (the master does not journal them), and the Replayer confines every name to the copy.
func (s *session) applyJournal(f wire.Frame) error {
	c := s.c
	if !c.journal {
		return errors.New("a journal operation before the cut-over")
	}
	op, err := capture.DecodeOp(f.Payload)
	if err != nil {
		return err
	}
	if tree.Excluded(op.Path) || (op.To != "" && tree.Excluded(op.To)) {
		return applyError{fmt.Errorf("master sent a reserved name: %w", tree.ErrBadName)}
	}
	if err := c.rp.Apply(op); err != nil {
		return applyError{fmt.Errorf("journal op %d: %w", f.Seq, err)}
	}
	if op.Kind == capture.OpWrite {
		c.cfg.Metrics.BytesReceived.Add(float64(len(op.Data)))
	}
	return nil
}
