package syncer

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// relay is a man in the middle on the replication path that understands
// the framing (not the keys): once armed, it does one thing to one frame
// of the master->clone direction, then passes everything through again.
type relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	action string // "", "flip", "inject", "replay", "reorder", "drop"
	done   chan struct{}
	term   uint64 // from the master's Hello, which is in the clear
	conns  []net.Conn
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	r := &relay{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.handle(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			c.Close()
		}
	})
	return r
}

func (r *relay) arm(action string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.action, r.done = action, make(chan struct{})
	return r.done
}

// take returns the armed action once.
func (r *relay) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.action
	if a != "" {
		r.action = ""
		close(r.done)
	}
	return a
}

// readFrame reads one frame, clear (its xxh3 trailer matches) or sealed.
func readRelayFrame(rd io.Reader) ([]byte, bool, error) {
	h := make([]byte, wire.HeaderSize)
	if _, err := io.ReadFull(rd, h); err != nil {
		return nil, false, err
	}
	n := int(binary.BigEndian.Uint32(h[:4]))
	b := make([]byte, wire.HeaderSize+n+wire.TrailerSize)
	copy(b, h)
	if _, err := io.ReadFull(rd, b[wire.HeaderSize:]); err != nil {
		return nil, false, err
	}
	if xxh3.Hash(b[4:wire.HeaderSize+n]) == binary.BigEndian.Uint64(b[wire.HeaderSize+n:]) {
		return b, true, nil
	}
	more := make([]byte, wire.TagSize-wire.TrailerSize)
	if _, err := io.ReadFull(rd, more); err != nil {
		return nil, false, err
	}
	return append(b, more...), false, nil
}

func (r *relay) handle(c net.Conn) {
	m, err := net.DialTimeout("tcp", r.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	r.conns = append(r.conns, c, m)
	r.mu.Unlock()
	go func() { _, _ = io.Copy(m, c); m.Close() }()
	defer c.Close()
	defer m.Close()
	var held []byte
	for {
		f, isClear, err := readRelayFrame(m)
		if err != nil {
			return
		}
		if isClear && wire.Type(f[4]) == wire.THello {
			r.mu.Lock()
			r.term = binary.BigEndian.Uint64(f[5:13])
			r.mu.Unlock()
		}
		out := [][]byte{f}
		// Only frames after the handshake, and only heartbeats or ops.
		if ty := wire.Type(f[4]); isClear && (ty == wire.THello || ty == wire.TAuthOK) {
			_, _ = c.Write(f)
			continue
		}
		if held != nil {
			out = [][]byte{f, held}
			held = nil
		} else {
			switch r.take() {
			case "flip":
				f[len(f)/2] ^= 0x20
			case "inject":
				out = append(r.forged(), f)
			case "replay":
				out = [][]byte{f, f}
			case "reorder":
				held, out = f, nil
			case "drop":
				out = nil
			}
		}
		for _, o := range out {
			if _, err := c.Write(o); err != nil {
				return
			}
		}
	}
}

// forged frames write pwned.txt, as a relay without the secret would try.
func (r *relay) forged() [][]byte {
	r.mu.Lock()
	term := r.term
	r.mu.Unlock()
	data := []byte("pwned")
	fd := wire.FileData{Hashes: []uint64{xxh3.Hash(data)}, Data: data}
	var out [][]byte
	for _, f := range []wire.Frame{
		{Type: wire.TFileBegin, Term: term, Seq: 1 << 40, Payload: (&wire.FileBegin{Path: "pwned.txt", Size: 5, Mode: 0o644}).Marshal()},
		{Type: wire.TFileData, Term: term, Seq: 1 << 40, Payload: fd.Marshal()},
		{Type: wire.TFileEnd, Term: term, Seq: 1 << 40},
	} {
		out = append(out, wire.AppendFrame(nil, f))
	}
	return out
}

// TestRelayCannotTamper: a relay on the path between master and clone
// flips a bit of, injects, replays, reorders or drops a frame of the live
// stream. The clone rejects the stream at that frame (it never applies
// forged data), reconnects, and ends up identical to the master.
func TestRelayCannotTamper(t *testing.T) {
	for _, action := range []string{"inject", "replay", "reorder", "drop", "flip"} {
		t.Run(action, func(t *testing.T) {
			mdir, cdir := t.TempDir(), t.TempDir()
			writeFile(t, filepath.Join(mdir, "f.txt"), []byte("genuine"), 0o644)
			m := startSyncer(t, "master", mdir, procOpt{})
			rl := startRelay(t, m.listen)
			c := startSyncer(t, "clone", cdir, procOpt{master: rl.ln.Addr().String()})
			waitEqual(t, 20*time.Second, mdir, cdir)
			done := rl.arm(action)
			writeFile(t, filepath.Join(mdir, "g.txt"), []byte("after tampering"), 0o644)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the relay saw no frame")
			}
			waitFor(t, 10*time.Second, "the clone rejects the tampered stream", func() bool {
				return strings.Contains(c.logs.String(), "frame authentication failed")
			})
			waitEqual(t, 20*time.Second, mdir, cdir)
			if _, err := os.Stat(filepath.Join(cdir, "pwned.txt")); err == nil {
				t.Fatal("the relay injected a file")
			}
			if bytes.Contains([]byte(c.logs.String()), []byte("pwned")) {
				t.Fatal("the clone looked at an injected frame")
			}
			_ = tree.StateDir
		})
	}
}
