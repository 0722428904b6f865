package replica

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const testSecret = "0123456789abcdef-replica-test"

// startMaster serves dir on a loopback listener; it stops with the test.
func startMaster(t *testing.T, dir string, cfg MasterConfig) (*Master, string) {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	if cfg.Listener == nil {
		if cfg.Listener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Dir, cfg.Root, cfg.Secret = dir, root, []byte(testSecret)
	if cfg.Term == 0 {
		cfg.Term = 1
	}
	m := NewMaster(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("master not ready")
	}
	return m, cfg.Listener.Addr().String()
}

// startClone follows addr into dir; it stops with the test.
func startClone(t *testing.T, dir, addr string) *Clone {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	st, err := OpenState(root)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClone(CloneConfig{Root: root, MasterAddr: addr, Secret: []byte(testSecret), ID: "clone-" + filepath.Base(dir), State: st})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func waitCond(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestIdlePeersCostNextToNothing: hundreds of unauthenticated connections
// that never say a word, from one address and from many, do not grow the
// master's heap beyond a small bound (buffers come only after auth; one
// address holds at most maxPreAuthPerIP handshakes, all of them at most
// maxPreAuth), a real clone still syncs meanwhile, and the master drops
// the idle peers at the handshake deadline.
func TestIdlePeersCostNextToNothing(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(mdir, "f.txt"), []byte("still replicated"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	_, addr := startMaster(t, mdir, MasterConfig{Metrics: metrics})
	before := heapInUse()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// 200 from one address, 200 from 50 others.
	for i := 0; i < 400; i++ {
		ip := net.IPv4(127, 0, 0, 2)
		if i >= 200 {
			ip = net.IPv4(127, 0, 1, byte(1+i%50))
		}
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 2 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	time.Sleep(200 * time.Millisecond) // the master accepted them all
	grown := int64(heapInUse()) - int64(before)
	t.Logf("heap grew by %d KiB with %d idle peers", grown>>10, len(conns))
	if grown > 8<<20 {
		t.Fatalf("400 idle peers grew the master's heap by %d MiB", grown>>20)
	}
	if n := metricValue(t, reg, "bedrock_sync_preauth_refused_total"); n < 300 {
		t.Fatalf("only %v idle peers refused", n)
	}

	c := startClone(t, cdir, addr)
	waitCond(t, 10*time.Second, "the clone syncs", func() bool {
		b, err := os.ReadFile(filepath.Join(cdir, "f.txt"))
		return err == nil && string(b) == "still replicated" && c.Status().Synced
	})

	// The handshake deadline: every idle peer the master kept is dropped.
	deadline := time.Now().Add(preAuthTimeout + 3*time.Second)
	for i, conn := range conns {
		_ = conn.SetReadDeadline(deadline)
		var err error
		for err == nil {
			_, err = conn.Read(make([]byte, 512))
		}
		if os.IsTimeout(err) {
			t.Fatalf("idle peer %d not dropped at the handshake deadline: %v", i, err)
		}
	}
}

// metricValue reads a counter or gauge from reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			return sum
		}
	}
	return 0
}
