package replica

import (
	"net"
	"sync"
	"time"
)

// Pre-authentication bounds: what peers that have not proved the secret
// may cost the master at once. Each such connection holds a goroutine, a
// socket and a few KiB (its handshake frames) for at most preAuthTimeout.
// One address gets maxPreAuthPerIP of them (more are refused), so a single
// peer cannot fill the table; when many addresses do, the oldest pending
// handshake is dropped for the newest, so a genuine clone, whose handshake
// takes one round trip, still gets through.
const (
	maxPreAuth      = 64
	maxPreAuthPerIP = 8
	preAuthTimeout  = 5 * time.Second
)

// preAuth tracks unauthenticated connections, oldest first.
type preAuth struct {
	mu      sync.Mutex
	byIP    map[string]int
	pending []*pendingConn
}

type pendingConn struct {
	conn net.Conn
	ip   string
	done bool
}

// acquire takes a slot for a new connection; release gives it back
// (idempotent: serve calls it once authenticated and again at exit).
// evicted says an older pending connection was closed to make room.
func (p *preAuth) acquire(conn net.Conn) (release func(), ok, evicted bool) {
	ip := conn.RemoteAddr().String()
	if ta, isTCP := conn.RemoteAddr().(*net.TCPAddr); isTCP {
		ip = ta.IP.String()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byIP == nil {
		p.byIP = make(map[string]int)
	}
	if p.byIP[ip] >= maxPreAuthPerIP {
		return nil, false, false
	}
	if len(p.pending) >= maxPreAuth {
		old := p.pending[0]
		p.removeLocked(old)
		_ = old.conn.Close() // its serve goroutine ends on the closed conn
		evicted = true
	}
	pc := &pendingConn{conn: conn, ip: ip}
	p.pending = append(p.pending, pc)
	p.byIP[ip]++
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.removeLocked(pc)
	}, true, evicted
}

func (p *preAuth) removeLocked(pc *pendingConn) {
	if pc.done {
		return
	}
	pc.done = true
	if p.byIP[pc.ip]--; p.byIP[pc.ip] <= 0 {
		delete(p.byIP, pc.ip)
	}
	for i, q := range p.pending {
		if q == pc {
			p.pending = append(p.pending[:i], p.pending[i+1:]...)
			break
		}
	}
}
