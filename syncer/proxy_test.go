package syncer

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxy sits between clones and a master: it can slow the master->clone
// direction down (so a transfer is long enough to kill something in the
// middle of it) and flip one byte of that stream (corruption).
type proxy struct {
	ln          net.Listener
	target      string
	bps         int64        // bytes per second master->clone, 0 = unlimited
	corruptAt   atomic.Int64 // flip the byte at this stream offset once (0 = never)
	corrupted   atomic.Bool
	corruptNext atomic.Bool // flip a byte in the next chunk that passes
	mu          sync.Mutex
	conns       []net.Conn
}

func startProxy(t *testing.T, target string, bps int64) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, bps: bps}
	go p.loop()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *proxy) loop() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *proxy) handle(c net.Conn) {
	m, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, m)
	p.mu.Unlock()
	go func() { _, _ = io.Copy(m, c); m.Close() }()
	var off int64
	buf := make([]byte, 16*1024)
	start := time.Now()
	for {
		n, err := m.Read(buf)
		if n > 0 {
			if at := p.corruptAt.Load(); at > 0 && off <= at && at < off+int64(n) && p.corrupted.CompareAndSwap(false, true) {
				buf[at-off] ^= 0x5a
			}
			if p.corruptNext.CompareAndSwap(true, false) {
				buf[n/2] ^= 0x5a
				p.corrupted.Store(true)
			}
			off += int64(n)
			if p.bps > 0 {
				if due := time.Duration(float64(off) / float64(p.bps) * float64(time.Second)); due > time.Since(start) {
					time.Sleep(due - time.Since(start))
				}
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	c.Close()
	m.Close()
}
