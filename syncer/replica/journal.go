package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// Capture mode (issue 16): the app writes through a capture mount (syncer/capture) whose
// journal is the Master itself. Every change the app makes is appended to the op log as a
// TJournal op, in the order the mount applied it, with its data; a clone that applies them
// in order holds a prefix of the master's write history.
//
// A clone still joins through the manifest and the watcher's operations (as in watch mode:
// fast, and it converges whatever the app does meanwhile), but a copy built that way is a
// mix of moments, so in capture mode it does not count as synced yet. (While every connected
// clone follows the journal the watcher only collects changed paths, and cuts them into
// operations once a clone connects: see watcherIdle.) Once it has caught up,
// its sender cuts it over to the journal: the mount is paused (no change can happen), the
// watcher is made to hand over every event of the changes before the pause (a marker event
// on the state directory, queued after them), the resulting operations are sent, and when
// the clone has acknowledged them its copy equals the directory at that head: TCut says so,
// the pause ends, and from then on the clone gets the journal only. The pause lasts one
// round trip plus the last changes' transfer, and is given up (and retried) past cutTimeout.
//
// Positions keep one meaning in both streams: the op log's sequence. A clone on the journal
// skips the watcher's operations (TNop advances it over them), a clone on the watcher's
// stream skips the journal's. A journal clone at position p holds exactly the directory as
// it was when op p was applied on the master; its acknowledgement comes after syncfs and
// the recorded position (Clone.record), so it is durable at every position it reports.
//
// Sync replication (MasterConfig.SyncAcks > 0): the Master is also the mount's Barrier, and
// an fsync through the mount returns only once SyncAcks journal clones acknowledged its
// marker, or fails with EIO after SyncTimeout (an app must then treat the transaction as not
// committed, as it would a disk error).

const (
	// cutTimeout bounds how long the app's writes may wait for a cut-over.
	cutTimeout = 2 * time.Second
	// cutRetry spaces failed cut-overs of a clone.
	cutRetry = time.Second
	// defaultLogBytes bounds the journal data kept for clones that are behind.
	defaultLogBytes = 64 << 20
	// defaultSyncTimeout bounds how long an fsync waits for clones in sync mode.
	defaultSyncTimeout = 10 * time.Second
)

// errCutAbandoned says a cut-over was given up; the clone stays on the watcher's stream and
// its sender tries again later.
var errCutAbandoned = errors.New("cut-over abandoned")

var (
	_ capture.Journal = (*Master)(nil)
	_ capture.Barrier = (*Master)(nil)
)

// Append journals one change the capture mount made (capture.Journal). It runs under the
// mount's ordering lock, so the op log's order is the order of the changes.
func (m *Master) Append(jop capture.Op) uint64 {
	if tree.Excluded(jop.Path) || (jop.To != "" && tree.Excluded(jop.To)) {
		return m.appendExcluded(jop)
	}
	payload := jop.AppendWire(make([]byte, 0, 48+len(jop.Path)+len(jop.To)+len(jop.Target)+len(jop.Data)))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.appendOps([]*op{{kind: wire.TJournal, path: jop.Path, payload: payload}})
	return m.head
}

// appendExcluded handles a change that involves our own top-level names (the state
// directory, lost+found), which are never replicated: changes inside them are local; a
// name moved out of the replicated tree into them is a removal for the clones; one moved
// in from them brings content the journal never carried, so every clone resyncs.
func (m *Master) appendExcluded(jop capture.Op) uint64 {
	from, to := tree.Excluded(jop.Path), jop.To != "" && tree.Excluded(jop.To)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case jop.Kind == capture.OpRename && !from && to:
		un := capture.Op{Kind: capture.OpUnlink, Path: jop.Path}
		m.appendOps([]*op{{kind: wire.TJournal, path: jop.Path, payload: un.AppendWire(nil)}})
	case (jop.Kind == capture.OpRename || jop.Kind == capture.OpLink) && from && !to:
		m.log.Warn("the app moved a name out of the syncer's own directories: clones resync", "from", jop.Path, "to", jop.To)
		m.ops, m.first, m.logBytes = nil, m.head+1, 0
	}
	return m.head
}

// WaitDurable returns once SyncAcks clones on the journal acknowledged seq (capture.Barrier).
func (m *Master) WaitDurable(ctx context.Context, seq uint64) error {
	need := m.cfg.SyncAcks
	if need <= 0 {
		return nil
	}
	timer := time.NewTimer(m.cfg.SyncTimeout)
	defer timer.Stop()
	for {
		m.mu.Lock()
		n := 0
		for c := range m.clones {
			if c.journal && c.acked.Seq >= seq {
				n++
			}
		}
		fenced, wake := m.fenced, m.ackWake
		m.mu.Unlock()
		if n >= need {
			return nil
		}
		if fenced {
			return ErrFenced
		}
		select {
		case <-wake:
		case <-timer.C:
			m.cfg.Metrics.SyncTimeouts.Inc()
			return fmt.Errorf("sync replication: %d of %d clone(s) acknowledged %d within %s", n, need, seq, m.cfg.SyncTimeout)
		case <-ctx.Done():
			return ctx.Err()
		case <-m.stop:
			return ErrFenced
		}
	}
}

// SetPause gives the master the capture mount's pause (capture.Server.Pause) once the mount
// is up; cut-overs wait for it.
func (m *Master) SetPause(pause func() (resume func())) {
	m.mu.Lock()
	m.pause = pause
	m.mu.Unlock()
}

func (m *Master) pauser() func() func() {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pause
}

// JournalClones counts the clones that follow the journal (for status and tests).
func (m *Master) JournalClones() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for c := range m.clones {
		if c.journal {
			n++
		}
	}
	return n
}

// watcherCaughtUp waits until the watch loop has read every event queued before this call:
// it touches the state directory, whose event (ignored otherwise) the loop reports back
// after it cut every change read with or before it into ops.
func (m *Master) watcherCaughtUp(ctx context.Context) error {
	mark := filepath.Join(m.cfg.Dir, tree.StateDir)
	if err := os.MkdirAll(mark, 0o700); err != nil {
		return fmt.Errorf("marker: %w", err)
	}
	done := make(chan struct{})
	select {
	case m.markReq <- done:
	case <-ctx.Done():
		return ctx.Err()
	case <-m.stop:
		return ErrFenced
	}
	now := time.Now()
	if err := os.Chtimes(mark, now, now); err != nil {
		return fmt.Errorf("marker: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-m.stop:
		return ErrFenced
	}
}

// cut moves a caught-up clone from the watcher's stream to the journal (see above). next is
// the stream's next sequence; on success the clone is at next-1 on the journal.
func (c *cloneConn) cut(ctx context.Context, next *uint64) error {
	m := c.m
	pause := m.pauser()
	if pause == nil {
		return errCutAbandoned
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cutTimeout)
	defer cancel()
	resume := pause()
	defer resume()
	if err := m.watcherCaughtUp(ctx); err != nil {
		return fmt.Errorf("%w: %w", errCutAbandoned, err)
	}
	head := m.Position().Seq
	if err := c.sendUpTo(next, head); err != nil {
		return err
	}
	for {
		m.mu.Lock()
		acked := c.acked.Seq
		m.mu.Unlock()
		if acked >= head {
			break
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%w: the clone did not acknowledge %d within %s", errCutAbandoned, head, cutTimeout)
			}
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	m.mu.Lock()
	c.journal = true
	m.mu.Unlock()
	c.wmu.Lock()
	err := c.send(wire.TCut, head, nil)
	if err == nil {
		err = c.flush()
	}
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	m.log.Info("clone cut over to the journal", "clone", c.id, "seq", head, "paused", time.Since(start).String())
	m.cfg.Metrics.Cuts.Inc()
	return nil
}

// sendUpTo sends the ops from *next through head that are for this clone's stream, then a
// TNop for any skipped at the end, and flushes.
func (c *cloneConn) sendUpTo(next *uint64, head uint64) error {
	m := c.m
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var skipped uint64
	for ; *next <= head; *next++ {
		m.mu.Lock()
		if *next < m.first {
			m.mu.Unlock()
			return errors.New("clone fell behind the op log during a cut-over")
		}
		o := m.ops[*next-m.first]
		journal := c.journal
		m.mu.Unlock()
		if (o.kind == wire.TJournal) != journal {
			skipped = o.seq
			continue
		}
		skipped = 0
		if err := c.sendOp(o); err != nil {
			return err
		}
	}
	if skipped != 0 {
		if err := c.send(wire.TNop, skipped, nil); err != nil {
			return err
		}
	}
	return c.flush()
}
