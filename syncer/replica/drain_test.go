package replica

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDrainWaitsForTheClones: Drain returns only once the clone has acknowledged the change the
// app made last (cut into ops by the flush, not by the watcher's own pace), and a clone that
// does not keep up bounds it by the caller's context instead of holding the hand-over.
func TestDrainWaitsForTheClones(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	mdir, cdir := t.TempDir(), t.TempDir()
	m, c, px, wait := pair(ctx, t, mdir, cdir)
	defer func() { cancel(); wait() }()

	px.stalled.Store(true)
	time.Sleep(20 * time.Millisecond) // the proxy's read in flight ends
	if err := os.WriteFile(filepath.Join(mdir, "last.txt"), []byte("written just before the hand-over"), 0o644); err != nil {
		t.Fatal(err)
	}
	short, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := m.Drain(short)
	scancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with the clone stalled, Drain returned %v; want the caller's deadline", err)
	}

	px.stalled.Store(false)
	long, lcancel := context.WithTimeout(ctx, 10*time.Second)
	defer lcancel()
	head, err := m.Drain(long)
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	if got := c.Status().Position; got.Less(head) {
		t.Fatalf("Drain returned at %v while the clone is at %v", head, got)
	}
	b, err := os.ReadFile(filepath.Join(cdir, "last.txt"))
	if err != nil || string(b) != "written just before the hand-over" {
		t.Fatalf("the clone holds %q (%v) after the drain", b, err)
	}
}
