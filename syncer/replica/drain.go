package replica

import (
	"context"
	"fmt"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// flushSettle is how long a flush waits for inotify events already queued by the kernel to
// reach the watch goroutine.
const flushSettle = 20 * time.Millisecond

// Drain is the master's last act before it hands the lock over with its app stopped (a
// graceful step-down, an app that exited): it cuts every change the app made into ops, then
// waits until every connected clone that follows the live stream has acknowledged them. The
// clone that takes over then holds what the app wrote last, instead of leaving it to the old
// master's lost+found. It returns the head it waited for; ctx bounds the wait (a clone that
// does not keep up must not hold the hand-over for long).
func (m *Master) Drain(ctx context.Context) (core.Position, error) {
	done := make(chan struct{})
	select {
	case m.flushReq <- done:
	case <-m.stop:
		return m.Position(), ErrFenced
	case <-ctx.Done():
		return m.Position(), fmt.Errorf("drain: %w", ctx.Err())
	}
	select {
	case <-done:
	case <-m.stop:
		return m.Position(), ErrFenced
	case <-ctx.Done():
		return m.Position(), fmt.Errorf("drain: %w", ctx.Err())
	}
	head := m.Position()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if m.ackedBy(head) {
			return head, nil
		}
		select {
		case <-ctx.Done():
			return head, fmt.Errorf("drain: clones did not acknowledge %d/%d: %w", head.Term, head.Seq, ctx.Err())
		case <-tick.C:
		}
	}
}

// ackedBy tells whether every connected clone on the live stream acknowledged head.
func (m *Master) ackedBy(head core.Position) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.clones {
		if c.synced && c.acked.Seq < head.Seq {
			return false
		}
	}
	return true
}
