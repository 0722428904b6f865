package replica

import (
	"bufio"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// TestBulkDataBoundedByDeclaredSize: a master (it knows the secret) that
// declares a 10-byte file and then streams megabytes of data for it does
// not make the clone buffer them: the clone drops the connection at the
// first byte past the declared size.
func TestBulkDataBoundedByDeclaredSize(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var written atomic.Int64
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		p, err := ServerHandshake(conn, []byte(testSecret), 9, 1, 0)
		if err != nil {
			return
		}
		seal := p.Seal
		if _, _, err := p.Open.ReadFrame(bufio.NewReader(conn), wire.MaxPayload, nil); err != nil { // NeedManifest
			return
		}
		e := wire.Enc{}
		tree.AppendEntry(&e, &tree.Entry{Path: "small.txt", Type: tree.TypeFile, Mode: 0o644, Size: 10, Hashes: []uint64{1}})
		_ = seal.WriteFrame(conn, wire.Frame{Type: wire.TManifestChunk, Term: 1, Payload: e.B})
		_ = seal.WriteFrame(conn, wire.Frame{Type: wire.TManifestEnd, Term: 1})
		_ = seal.WriteFrame(conn, wire.Frame{Type: wire.TFileBegin, Term: 1, Payload: (&wire.FileBegin{Path: "small.txt", Size: 10, Mode: 0o644, Whole: true}).Marshal()})
		data := make([]byte, dataChunk)
		fd := wire.FileData{Hashes: make([]uint64, dataChunk/tree.BlockSize), Data: data}
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for i := 0; i < 256; i++ { // 64 MiB
			if seal.WriteFrameParts(conn, wire.TFileData, 1, 0, fd.AppendHeader(nil), data) != nil {
				return
			}
			written.Add(int64(len(data)))
		}
	}()
	c := startClone(t, t.TempDir(), ln.Addr().String())
	select {
	case <-served:
	case <-time.After(20 * time.Second):
		t.Fatal("the fake master is still writing")
	}
	if n := written.Load(); n >= 32<<20 {
		t.Fatalf("the clone took %d MiB for a 10-byte file", n>>20)
	}
	waitCond(t, 5*time.Second, "the clone reports the excess", func() bool {
		return strings.Contains(c.Status().Error, "declared size")
	})
}
