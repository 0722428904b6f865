package election

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// heldLease is a lease held until its deadline; it records its release.
type heldLease struct {
	deadline time.Time
	released chan time.Time
	done     chan struct{}
}

func (l *heldLease) Term() uint64                              { return 7 }
func (l *heldLease) Deadline() time.Time                       { return l.deadline }
func (l *heldLease) Renewed() <-chan time.Time                 { return nil }
func (l *heldLease) Done() <-chan struct{}                     { return l.done }
func (l *heldLease) Err() error                                { return nil }
func (l *heldLease) Update(context.Context, lease.Info) error  { return nil }
func (l *heldLease) Mark(context.Context, core.Position) error { return nil }
func (l *heldLease) Release(context.Context) error {
	l.released <- time.Now()
	return nil
}

// TestStepDownWithoutGateWaitsForDeadline: a graceful step-down with no
// driver gate connected (nobody can confirm the app stopped, and nobody
// can stop it: it runs until its deadline) releases the lock only after
// the deadline, never at once (two masters otherwise).
func TestStepDownWithoutGateWaitsForDeadline(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ann := listenAnnouncer(ctx, t)
	e := &Elector{cfg: Config{Announcer: ann, Local: &fakeSyncer{id: "a"}}, log: hclog.NewNullLogger(), roles: make(chan core.Assignment, 1)}
	l := &heldLease{deadline: time.Now().Add(1500 * time.Millisecond), released: make(chan time.Time, 1), done: make(chan struct{})}
	if err := e.release(ctx, l, 7); err != nil {
		t.Fatal(err)
	}
	at := <-l.released
	if at.Before(l.deadline) {
		t.Fatalf("released %s before the deadline with no gate connected", l.deadline.Sub(at))
	}
}

// listenAnnouncer is an announcer on a socket of its own (in a short temporary directory:
// a unix socket path is limited to about 100 bytes), closed when the test ends.
func listenAnnouncer(ctx context.Context, t *testing.T) *announce.Announcer {
	t.Helper()
	dir, err := os.MkdirTemp("", "el")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	ann, err := announce.Listen(ctx, filepath.Join(dir, "r.sock"), announce.AnnouncerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ann.Close() })
	return ann
}
