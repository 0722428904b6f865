package replica

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// stallProxy forwards a clone's connection to the master; while stalled it stops reading from
// the master, which then blocks on a full socket like a clone whose disk or link froze.
type stallProxy struct {
	ln      net.Listener
	target  string
	stalled atomic.Bool
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			m, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(m, c); m.Close() }()
			go func() {
				defer c.Close()
				defer m.Close()
				buf := make([]byte, 64<<10)
				for {
					for p.stalled.Load() {
						time.Sleep(5 * time.Millisecond)
					}
					// A short read deadline, so that a stall takes effect within 5 ms
					// instead of after the next frame a blocked Read would still pass on.
					_ = m.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
					n, err := m.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

// A file that grows while a clone lags is sent about once, not once per op (issue 13: a
// 32 MiB file written during a one-second stall sent 383 MB). Each op of the growth carries
// the blocks past the size it saw, and every op is sent by reading the file as it is now:
// without sentReads a stalled clone receives the tail of the file again with every op.
func TestGrowingFileSentOncePerChange(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 32 MiB")
	}
	mdir, cdir := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, c, px, wait := pair(ctx, t, mdir, cdir)
	defer wait()
	defer cancel()
	const total, chunk = 32 << 20, 256 << 10
	data := bytes.Repeat([]byte("growing log line, padded to make blocks distinct 0123456789\n"), total/60+1)[:total]
	f, err := os.Create(filepath.Join(mdir, "big.log"))
	if err != nil {
		t.Fatal(err)
	}
	px.stalled.Store(true)
	stallEnd := time.Now().Add(time.Second)
	for off := 0; off < total; off += chunk {
		if _, err := f.Write(data[off : off+chunk]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second / (total / chunk)) // the whole file over about one second
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(stallEnd))
	px.stalled.Store(false)
	waitUntil(t, 30*time.Second, "clone has the whole file", func() bool {
		b, err := os.ReadFile(filepath.Join(cdir, "big.log"))
		return err == nil && bytes.Equal(b, data) && c.Status().CaughtUp
	})
	var sent int64
	for _, cs := range m.Clones() {
		sent += cs.BytesSent
	}
	t.Logf("%d MiB file written during a 1s stall: %d MiB sent (%.2f×)", total>>20, sent>>20, float64(sent)/total)
	if sent > total*5/4 {
		t.Fatalf("sent %d bytes for a %d-byte file: blocks were sent again for every op", sent, total)
	}
}

// pair runs a master on mdir and a clone on cdir, connected through a stall proxy, until ctx
// ends; wait waits for both to stop. It returns once the clone follows the live stream.
func pair(ctx context.Context, t *testing.T, mdir, cdir string) (*Master, *Clone, *stallProxy, func()) {
	t.Helper()
	mroot, err := os.OpenRoot(mdir)
	if err != nil {
		t.Fatal(err)
	}
	croot, err := os.OpenRoot(cdir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	m := NewMaster(MasterConfig{Dir: mdir, Root: mroot, Term: 1, Listener: ln, Secret: secret})
	mdone := make(chan error, 1)
	go func() { mdone <- m.Run(ctx) }()
	px := newStallProxy(t, ln.Addr().String())
	st, err := OpenState(croot)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClone(CloneConfig{Root: croot, MasterAddr: px.ln.Addr().String(), Secret: secret, ID: "c", State: st})
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(ctx) }()
	waitUntil(t, 10*time.Second, "clone following", func() bool { return c.Status().CaughtUp })
	return m, c, px, func() {
		<-mdone
		<-cdone
		mroot.Close()
		croot.Close()
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
