package replica

import (
	"bufio"
	"net"
	"sync"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// session is a clone's connection to one master, from the handshake (handshake.go) through
// the initial sync (plan.go, bulk.go) to the live stream (live.go): the framing, sealing and
// read deadlines of that connection.
type session struct {
	c    *Clone
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	wmu  sync.Mutex
	term uint64
	head uint64
	bulk bool
	buf  []byte
	fw   *tree.FileWriter
	// seal and open are the two directions once the handshake is done
	// (wire/secure.go): nil before, when only clear handshake frames pass.
	seal *wire.Sealer
	open *wire.Opener
}

// send writes one frame, sealed once the handshake is done (under wmu).
func (s *session) send(t wire.Type, seq uint64, payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	f := wire.Frame{Type: t, Term: s.term, Seq: seq, Payload: payload}
	var err error
	if s.seal != nil {
		err = s.seal.WriteFrame(s.w, f)
	} else {
		err = wire.WriteFrame(s.w, f)
	}
	if err != nil {
		return err
	}
	return s.w.Flush()
}

// readData reads a frame, with FileData decoded straight into a buffer
// from get (see wire.ReadDataFrame).
func (s *session) readData(get func(int) []byte) (wire.Frame, wire.FileData, error) {
	_ = s.conn.SetReadDeadline(time.Now().Add(bulkTimeout))
	f, d, b, err := s.open.ReadDataFrame(s.r, s.conn, wire.MaxPayload, s.buf, get)
	s.buf = b
	if err == nil {
		s.c.heardNow(true)
	}
	return f, d, err
}

func (s *session) read(limit int) (wire.Frame, error) {
	timeout := readTimeout
	if s.bulk {
		timeout = bulkTimeout // no heartbeats during an initial sync
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(timeout))
	var (
		f   wire.Frame
		b   []byte
		err error
	)
	if s.open != nil {
		f, b, err = s.open.ReadFrame(s.r, limit, s.buf)
	} else {
		f, b, err = wire.ReadFrame(s.r, limit, s.buf)
	}
	s.buf = b
	if err == nil {
		s.c.heardNow(s.bulk)
	}
	return f, err
}
