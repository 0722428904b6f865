package syncer

import (
	"testing"
	"time"
)

// TestCompleteCopyStaysPromotable: a clone that finished its initial sync keeps a complete copy
// at its position when it is restarted toward a new master that never answers (the new master
// died right after its promotion): it must stay eligible for promotion, or the group would be
// left without a master. A clone killed in the middle of its initial sync, on the contrary, has
// a partial copy and must not claim to be synced when it comes back.
func TestCompleteCopyStaysPromotable(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	bigTree(t, mdir, 4, 256<<10)
	m := startSyncer(t, "master", mdir, procOpt{})
	c := startSyncer(t, "clone", cdir, procOpt{master: m.listen})
	waitEqual(t, 30*time.Second, mdir, cdir)
	waitFor(t, 10*time.Second, "synced", func() bool { return c.status().Synced })
	c.kill()

	dead := freeAddr(t) // nobody listens there: the new master is gone
	c2 := startSyncer(t, "clone-again", cdir, procOpt{master: dead, term: 2})
	time.Sleep(500 * time.Millisecond) // a few failed dials
	if st := c2.status(); !st.Synced {
		t.Fatalf("a complete copy restarted toward an unreachable master reports synced=false: %+v", st)
	}
}

func TestPartialCopyIsNotPromotable(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	bigTree(t, mdir, 12, 2<<20)
	m := startSyncer(t, "master", mdir, procOpt{})
	px := startProxy(t, m.listen, 12<<20)
	c := startSyncer(t, "clone", cdir, procOpt{master: px.addr()})
	waitFor(t, 20*time.Second, "transfer under way", func() bool { return c.status().Progress.BytesDone > 4<<20 })
	if c.status().Progress.Done {
		t.Fatal("transfer finished before the kill")
	}
	c.kill()
	c2 := startSyncer(t, "clone-again", cdir, procOpt{master: freeAddr(t), term: 2})
	time.Sleep(500 * time.Millisecond)
	if st := c2.status(); st.Synced || st.CaughtUp {
		t.Fatalf("a copy killed mid initial sync claims synced=%v caught_up=%v", st.Synced, st.CaughtUp)
	}
}
