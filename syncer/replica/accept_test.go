package replica

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// flakyListener fails Accept the way a process out of file descriptors
// does, as many times as told.
type flakyListener struct {
	net.Listener
	fail atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fail.Add(-1) >= 0 {
		time.Sleep(time.Millisecond)
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptErrorsDoNotEndReplication: accept errors (out of file
// descriptors) are retried with a backoff and counted, the listener is
// reported down meanwhile, and clones still connect once they pass.
func TestAcceptErrorsDoNotEndReplication(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(mdir, "f.txt"), []byte("through EMFILE"), 0o644); err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &flakyListener{Listener: inner}
	ln.fail.Store(8)
	reg := prometheus.NewRegistry()
	m, addr := startMaster(t, mdir, MasterConfig{Listener: ln, Metrics: NewMetrics(reg)})
	waitCond(t, 10*time.Second, "the listener reported down", func() bool { return m.ListenErr() != nil || ln.fail.Load() < 0 })
	c := startClone(t, cdir, addr)
	waitCond(t, 20*time.Second, "the clone syncs", func() bool {
		b, err := os.ReadFile(filepath.Join(cdir, "f.txt"))
		return err == nil && string(b) == "through EMFILE" && c.Status().Synced
	})
	if n := metricValue(t, reg, "bedrock_sync_accept_errors_total"); n < 8 {
		t.Fatalf("accept errors counted: %v", n)
	}
	if err := m.ListenErr(); err != nil {
		t.Fatalf("listener still reported down: %v", err)
	}
	if metricValue(t, reg, "bedrock_sync_listener_up") != 1 {
		t.Fatal("listener_up not 1")
	}
}

// TestClosedListenerReopened: a listener that closes under the master is
// opened again (Relisten) and clones reconnect; without Relisten, Run
// returns an error (the syncer steps down) instead of serving nothing.
func TestClosedListenerReopened(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(mdir, "f.txt"), []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := inner.Addr().String()
	var relistened atomic.Int32
	m, _ := startMaster(t, mdir, MasterConfig{Listener: inner, Relisten: func() (net.Listener, error) {
		relistened.Add(1)
		return net.Listen("tcp", addr)
	}})
	c := startClone(t, cdir, addr)
	waitCond(t, 20*time.Second, "the clone syncs", func() bool { return c.Status().Synced })
	inner.Close()
	waitCond(t, 10*time.Second, "the listener opened again", func() bool { return relistened.Load() > 0 && m.ListenErr() == nil })
	// A clone that connects now is served.
	c2dir := t.TempDir()
	c2 := startClone(t, c2dir, addr)
	if err := os.WriteFile(filepath.Join(mdir, "g.txt"), []byte("after relisten"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 20*time.Second, "the new clone syncs", func() bool {
		b, err := os.ReadFile(filepath.Join(c2dir, "g.txt"))
		return err == nil && string(b) == "after relisten" && c2.Status().Synced
	})

	// Without Relisten the master stops with an error.
	root, err := os.OpenRoot(mdir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m2 := NewMaster(MasterConfig{Dir: mdir, Root: root, Term: 1, Listener: ln2, Secret: []byte(testSecret)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m2.Run(ctx) }()
	<-m2.Ready()
	time.Sleep(50 * time.Millisecond)
	ln2.Close()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Run returned %v, want an error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a master without a listener kept running")
	}
}
