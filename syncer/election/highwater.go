package election

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// HighWaterReporter is implemented by a Local that replicates: the highest
// position of the current term a clone has acknowledged. The master
// publishes it as the group's high-water mark (lease/highwater.go): no clone
// behind it can be promoted. A Local without it publishes its own position.
type HighWaterReporter interface {
	HighWater() core.Position
}

// finalAckWait bounds how long a master stepping down waits, after its app
// stopped, for a clone to acknowledge its last changes before it publishes
// its final mark and releases the lock.
const finalAckWait = 300 * time.Millisecond

// highWater is the mark to publish now.
func (e *Elector) highWater() core.Position {
	if hr, ok := e.cfg.Local.(HighWaterReporter); ok {
		return hr.HighWater()
	}
	return e.cfg.Local.Info().Position
}

// markLoop publishes the high-water mark every lease.MarkEvery while it
// moves, until ctx ends or the lease is lost. Failures are logged once per
// kind: the next tick retries, and a lost lease ends the loop.
func (e *Elector) markLoop(ctx context.Context, l lease.Lease, term uint64) {
	t := time.NewTicker(lease.MarkEvery)
	defer t.Stop()
	var marked core.Position
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.Done():
			return
		case <-t.C:
		}
		hw := e.highWater()
		if hw.Term != term || !marked.Less(hw) {
			continue // nothing acknowledged in this term yet, or no progress
		}
		if err := l.Mark(ctx, hw); err != nil {
			if errors.Is(err, lease.ErrLost) || ctx.Err() != nil {
				return
			}
			if err.Error() != lastErr {
				lastErr = err.Error()
				e.log.Warn("publishing the high-water mark failed; retrying", "term", term, "mark", hw.String(), "error", err)
			}
			continue
		}
		marked, lastErr = hw, ""
	}
}

// markFinal publishes the last mark before a graceful release: the app has
// stopped, so the head no longer moves; a clone that acknowledges it within
// finalAckWait makes it the mark, and only clones holding it can take over.
// Without an acknowledgement the mark stays where the clones are.
func (e *Elector) markFinal(ctx context.Context, l lease.Lease, term uint64) {
	if !e.cfg.Local.Serving(term) {
		return // never served (a promotion that timed out): nothing of this term to publish
	}
	head := e.cfg.Local.Info().Position
	deadline := time.Now().Add(finalAckWait)
	hw := e.highWater()
	for hw.Less(head) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		hw = e.highWater()
	}
	if hw.Term != term {
		return
	}
	mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := l.Mark(mctx, hw); err != nil {
		e.log.Warn("publishing the final high-water mark failed", "term", term, "mark", hw.String(), "error", err)
	}
}

// decided announces, while the lock is free, that this instance may not be
// promoted and whether the whole group waits (lease.Decision.Stalled), so
// that the driver can raise a task event and operators see why no master
// is elected.
func (e *Elector) decided(d lease.Decision) {
	msg := ""
	switch {
	case d.Stalled:
		msg = stalledPrefix + d.Reason
	case !d.Eligible:
		msg = notPromotablePrefix + d.Reason
	}
	e.setMessage(func(s announce.State) (string, bool) {
		if s.Role == core.RoleMaster {
			return "", false
		}
		if msg == "" && !strings.HasPrefix(s.Message, stalledPrefix) && !strings.HasPrefix(s.Message, notPromotablePrefix) {
			return "", false // nothing of ours to take back
		}
		return msg, true
	})
}

// setMessage changes the announced message to what choose returns, if it says so and it
// differs: an Update always pushes the state to the gates, so a no-op is not sent.
func (e *Elector) setMessage(choose func(announce.State) (string, bool)) {
	if msg, ok := choose(e.cfg.Announcer.State()); !ok || msg == e.cfg.Announcer.State().Message {
		return
	}
	e.cfg.Announcer.Update(func(s *announce.State) {
		if msg, ok := choose(*s); ok {
			s.Message = msg
		}
	})
}

// The announced messages of decided; the driver can match them to raise task events.
const (
	stalledPrefix       = announce.MsgStalled
	notPromotablePrefix = announce.MsgNotPromotable
)

// WarningReporter is optionally implemented by Local: a problem of the local
// copy worth announcing while it lasts, such as a clone hearing nothing from
// its master ("" when none). A warning starts with NotReceiving when the
// clone stopped receiving.
type WarningReporter interface {
	Warning() string
}

// NotReceiving starts the warning of a clone that hears nothing from its
// master; receivingAgain is announced when it hears from it again.
const (
	NotReceiving   = announce.MsgNotReceiving
	receivingAgain = announce.MsgReceivingAgain
)

// refreshWarning announces the local warning as the message (a decision
// about promotion, more important, is left in place) and takes it back once
// the problem is gone.
func (e *Elector) refreshWarning() {
	wr, ok := e.cfg.Local.(WarningReporter)
	if !ok {
		return
	}
	w := wr.Warning()
	e.setMessage(func(s announce.State) (string, bool) {
		switch {
		case s.Role == core.RoleMaster:
		case strings.HasPrefix(s.Message, stalledPrefix), strings.HasPrefix(s.Message, notPromotablePrefix):
		case w != "":
			return w, true
		case strings.HasPrefix(s.Message, NotReceiving):
			return receivingAgain, true
		}
		return "", false
	})
}
