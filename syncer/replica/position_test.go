package replica

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A clone's durable position advances with every replicated change it acknowledges, and never
// lags what the master counts as acknowledged (the high-water mark the election publishes):
// a clone restarted after acknowledging claims at least that (issue 13: positions stayed at
// seq 0 in the state file while the app wrote continuously, so restarted syncers claimed
// whatever their last initial sync left).
func TestClonePositionRecordedBeforeAck(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, c, _, wait := pair(ctx, t, mdir, cdir)
	defer wait()
	defer cancel()
	for i := range 20 {
		if err := os.WriteFile(filepath.Join(mdir, fmt.Sprintf("f%d", i)), []byte(fmt.Sprint(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	head := m.Position()
	waitUntil(t, 10*time.Second, "clone acknowledged the head", func() bool { return m.HighWater() == head })
	if head.Seq < 20 {
		t.Fatalf("head %+v after 20 files", head)
	}
	croot, err := os.OpenRoot(cdir)
	if err != nil {
		t.Fatal(err)
	}
	defer croot.Close()
	st, err := OpenState(croot) // what a restarted syncer reads
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Get().Position; got.Less(m.HighWater()) {
		t.Fatalf("recorded position %+v is behind the acknowledged %+v", got, m.HighWater())
	}
	if got := c.Status().Position; got != head {
		t.Fatalf("clone at %+v, head %+v", got, head)
	}
}

// A clone that stops receiving says so within a few heartbeats, and again when it hears from
// its master.
func TestCloneReportsSilence(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, c, px, wait := pair(ctx, t, mdir, cdir)
	defer wait()
	defer cancel()
	time.Sleep(2 * heartbeatEvery)
	if c.Status().Stalled {
		t.Fatal("stalled while heartbeats arrive")
	}
	px.stalled.Store(true)
	start := time.Now()
	waitUntil(t, stallAfter+2*heartbeatEvery, "the clone reports the silence", func() bool { return c.Status().Stalled })
	t.Logf("silence reported after %s", time.Since(start).Round(time.Millisecond))
	px.stalled.Store(false)
	waitUntil(t, 3*heartbeatEvery, "the clone hears again", func() bool { return !c.Status().Stalled })
}
