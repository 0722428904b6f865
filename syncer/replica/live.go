package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// The live stream: after the initial sync, the master's operations are applied in order,
// each made durable before it is acknowledged.

// applyFile handles file frames; done is true when a file was committed
// (or reported gone).
func (s *session) applyFile(f wire.Frame) (bool, error) {
	c := s.c
	switch f.Type {
	case wire.TFileBegin:
		var b wire.FileBegin
		if err := b.Unmarshal(f.Payload); err != nil {
			return false, err
		}
		if err := tree.ValidName(b.Path); err != nil || tree.Excluded(b.Path) {
			return false, applyError{fmt.Errorf("master sent a bad name: %w", tree.ErrBadName)}
		}
		if s.fw != nil {
			return false, errors.New("file begins inside another file")
		}
		fw, err := c.ap.BeginFile(b, false)
		if err != nil {
			return false, applyError{err}
		}
		s.fw = fw
	case wire.TFileData:
		if s.fw == nil {
			return false, errors.New("file data outside a file")
		}
		var d wire.FileData
		if err := d.Unmarshal(f.Payload); err != nil {
			return false, err
		}
		if err := s.fw.Write(d); err != nil {
			if errors.Is(err, tree.ErrBadBlock) || errors.Is(err, wire.ErrMalformed) {
				return false, err // transport problem: resume re-requests
			}
			return false, applyError{err}
		}
		c.cfg.Metrics.BytesReceived.Add(float64(len(d.Data)))
		c.mu.Lock()
		c.st.Progress.BytesDone += int64(len(d.Data))
		c.mu.Unlock()
	case wire.TFileEnd:
		if s.fw == nil {
			return false, errors.New("file end outside a file")
		}
		fw := s.fw
		s.fw = nil
		if err := fw.Commit(); err != nil {
			return false, applyError{err}
		}
		return true, nil
	case wire.TFileGone:
		var pm wire.PathMsg
		if err := pm.Unmarshal(f.Payload); err != nil {
			return false, err
		}
		return true, nil
	default:
		return false, fmt.Errorf("unexpected %s from master", f.Type)
	}
	return false, nil
}

// stream applies live ops in order and acknowledges, after syncing the
// filesystem, whenever it has drained what the master sent (group commit).
func (s *session) stream(ctx context.Context) error {
	c := s.c
	c.mu.Lock()
	c.resumable = true
	c.st.Healthy, c.st.Error = true, ""
	c.mu.Unlock()
	c.cfg.Metrics.Healthy.Set(1)
	c.updateCaughtUp()
	// A resumed session may hold ops applied before the last one broke, not yet synced and
	// recorded: those are acknowledged only through the path below.
	c.mu.Lock()
	unacked := c.st.Position != c.recorded
	c.mu.Unlock()
	for ctx.Err() == nil {
		if unacked && s.r.Buffered() == 0 {
			if err := c.ap.Sync(); err != nil {
				return applyError{err}
			}
			pos := c.Status().Position
			if err := c.record(pos); err != nil {
				return err
			}
			if err := s.send(wire.TAck, pos.Seq, nil); err != nil {
				return err
			}
			unacked = false
			c.updateCaughtUp()
		}
		f, err := s.read(wire.MaxPayload)
		if err != nil {
			return err
		}
		if err := s.checkTerm(f); err != nil {
			return err
		}
		if c.journal && watcherOp(f.Type) {
			return fmt.Errorf("a watcher's %s on the journal stream", f.Type)
		}
		applied := true
		switch f.Type {
		case wire.THeartbeat:
			c.mu.Lock()
			c.st.MasterSeq = max(c.st.MasterSeq, f.Seq)
			c.mu.Unlock()
			c.updateCaughtUp()
			// Ack heartbeats too, so the master sees we are alive.
			if !unacked {
				if err := s.send(wire.TAck, c.Status().Position.Seq, nil); err != nil {
					return err
				}
			}
			continue
		case wire.TJournal:
			err = s.applyJournal(f)
		case wire.TNop:
		case wire.TCut:
			err = s.cutOver(f)
		case wire.TFileBegin, wire.TFileData:
			applied = false
			_, err = s.applyFile(f)
		case wire.TFileEnd, wire.TFileGone:
			_, err = s.applyFile(f)
		case wire.TMkdir:
			var m wire.Meta
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.Mkdir(m))
				}
			}
		case wire.TMeta:
			var m wire.Meta
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.SetMeta(m))
				}
			}
		case wire.TSymlink:
			var m wire.Symlink
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.Symlink(m))
				}
			}
		case wire.TDelete:
			var m wire.PathMsg
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.Path); err == nil {
					err = wrapApply(c.ap.Delete(m.Path))
				}
			}
		case wire.TRename:
			var m wire.Rename
			if err = m.Unmarshal(f.Payload); err == nil {
				if err = checkName(m.From); err == nil {
					if err = checkName(m.To); err == nil {
						err = wrapApply(c.ap.Rename(m.From, m.To))
					}
				}
			}
		case wire.TResyncRequired:
			return applyError{errors.New("master no longer holds our position, resyncing")}
		case wire.TError:
			return peerError(f)
		default:
			return fmt.Errorf("unexpected %s from master", f.Type)
		}
		if err != nil {
			return err
		}
		if applied {
			c.mu.Lock()
			c.st.Position = core.Position{Term: s.term, Seq: f.Seq}
			c.st.MasterSeq = max(c.st.MasterSeq, f.Seq)
			c.mu.Unlock()
			c.cfg.Metrics.Seq.Set(float64(f.Seq))
			unacked = true
		}
	}
	return ctx.Err()
}

func (c *Clone) updateCaughtUp() {
	c.mu.Lock()
	c.st.CaughtUp = c.st.Synced && c.st.Position.Seq >= c.st.MasterSeq
	up := c.st.CaughtUp
	c.mu.Unlock()
	if up {
		c.cfg.Metrics.CaughtUp.Set(1)
	} else {
		c.cfg.Metrics.CaughtUp.Set(0)
	}
}
