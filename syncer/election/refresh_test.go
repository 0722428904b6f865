package election

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// lagSyncer is a local syncer that reports its lag.
type lagSyncer struct {
	mu       sync.Mutex
	seq, lag uint64
	caughtUp bool
}

func (l *lagSyncer) set(seq, lag uint64, caughtUp bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq, l.lag, l.caughtUp = seq, lag, caughtUp
}

func (l *lagSyncer) Info() lease.Info {
	l.mu.Lock()
	defer l.mu.Unlock()
	return lease.Info{ID: "a", CaughtUp: l.caughtUp, Position: core.Position{Term: 3, Seq: l.seq}}
}

func (l *lagSyncer) Serving(uint64) bool { return false }

func (l *lagSyncer) Lag() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lag, l.caughtUp
}

// TestRefreshAnnouncesLag: between role changes the elector keeps the
// announced position, caught-up flag and lag current, and touches nothing
// else of the announcement.
func TestRefreshAnnouncesLag(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ann := listenAnnouncer(ctx, t)
	local := &lagSyncer{}
	e := &Elector{cfg: Config{Announcer: ann, Local: local, Refresh: 10 * time.Millisecond}, log: hclog.NewNullLogger()}
	ann.Set(announce.State{Role: core.RoleClone, Term: 3, MasterAddr: "127.0.0.3:2345", Message: "following 127.0.0.3:2345 (term 3)",
		Progress: &core.Progress{BytesTotal: 10, BytesDone: 4}})
	go e.refresh(ctx)

	wait := func(ok func(announce.State) bool) announce.State {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if st := ann.State(); ok(st) {
				return st
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("announced %+v", ann.State())
		return announce.State{}
	}
	// initial sync: no lag yet
	local.set(0, 7, false)
	st := wait(func(s announce.State) bool { return s.Position.Seq == 0 && !s.CaughtUp })
	if st.Lag != 0 || st.Progress == nil {
		t.Fatalf("a syncing clone announced %+v", st)
	}
	// synced, behind by 7: the lag is announced and the progress is over
	local.set(40, 7, true)
	st = wait(func(s announce.State) bool { return s.CaughtUp && s.Lag == 7 })
	if st.Position != (core.Position{Term: 3, Seq: 40}) || st.Progress != nil ||
		st.Role != core.RoleClone || st.MasterAddr != "127.0.0.3:2345" || st.Message != "following 127.0.0.3:2345 (term 3)" {
		t.Fatalf("refreshed into %+v", st)
	}
	local.set(47, 0, true)
	wait(func(s announce.State) bool { return s.Lag == 0 && s.Position.Seq == 47 })
}
