package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/zeebo/xxh3"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// The master's side of one clone's connection: handshake (handshake.go), initial sync from
// a manifest, then the live stream of operations and the clone's acks.

// cloneConn is the master's view of one connected clone.
type cloneConn struct {
	m      *Master
	conn   net.Conn
	id     string
	w      *bufio.Writer
	wmu    sync.Mutex
	acked  core.Position
	synced bool
	// journal: the clone follows the capture journal (cut over, or resumed so); guarded by
	// m.mu, written only by the stream goroutine.
	journal bool
	// cutAt is when a cut-over may be tried next (stream goroutine only).
	cutAt  time.Time
	sent   int64
	files  int64
	since  time.Time
	rbuf   []byte
	hdr    []byte
	fbuf   []byte
	hashes []uint64
	// seal and open are the connection's two directions after the
	// handshake (wire/secure.go); seal under wmu, open by the reader.
	seal *wire.Sealer
	open *wire.Opener
	// reads remembers what this connection sent of each file and when the read began (see
	// sentReads); only the stream goroutine touches it.
	reads sentReads
	// this clone's series
	bytesSent, filesSent prometheus.Counter
}

// CloneStatus is the master's view of a clone.
type CloneStatus struct {
	ID         string  `json:"id"`
	Addr       string  `json:"addr"`
	Acked      uint64  `json:"acked_seq"`
	LagOps     uint64  `json:"lag_ops"`
	LagSeconds float64 `json:"lag_seconds"`
	Synced     bool    `json:"synced"`
	BytesSent  int64   `json:"bytes_sent"`
	FilesSent  int64   `json:"files_sent"`
}

// Clones reports every connected clone's lag.
func (m *Master) Clones() []CloneStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []CloneStatus
	now := time.Now()
	for c := range m.clones {
		s := CloneStatus{ID: c.id, Addr: c.conn.RemoteAddr().String(), Acked: c.acked.Seq, Synced: c.synced, BytesSent: c.sent, FilesSent: c.files}
		if c.acked.Seq < m.head {
			s.LagOps = m.head - c.acked.Seq
			if i := c.acked.Seq + 1; i >= m.first && i-m.first < uint64(len(m.ops)) {
				s.LagSeconds = now.Sub(m.ops[i-m.first].at).Seconds()
			} else {
				s.LagSeconds = now.Sub(c.since).Seconds()
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// send writes one sealed frame (callers hold wmu).
func (c *cloneConn) send(t wire.Type, seq uint64, payload []byte) error {
	b, err := c.seal.Append(c.fbuf[:0], wire.Frame{Type: t, Term: c.m.cfg.Term, Seq: seq, Payload: payload})
	if err != nil {
		return err
	}
	c.fbuf = b
	if _, err := c.w.Write(c.fbuf); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

func (c *cloneConn) flush() error {
	return c.w.Flush()
}

// serve runs one clone connection: authenticate, then manifest or resume,
// then the live stream. Nothing but the handshake is read from a peer that
// has not proved it knows the secret, and it costs next to nothing: the
// handshake is read without a buffer (the clone sends nothing past its Auth
// before our AuthOK), under preAuthTimeout, and the connection's buffers
// (over half a MiB) are allocated only after the peer authenticated.
// release gives back the connection's pre-authentication slot.
func (m *Master) serve(ctx context.Context, conn net.Conn, release func()) {
	defer conn.Close()
	defer release()
	log := m.log.With("peer", conn.RemoteAddr().String())
	_ = conn.SetDeadline(time.Now().Add(preAuthTimeout))
	peer, ok := m.handshake(conn, log)
	if !ok {
		return
	}
	release()
	c := &cloneConn{m: m, conn: conn, since: time.Now(), rbuf: make([]byte, dataChunk), seal: peer.Seal, open: peer.Open, id: peer.ID}
	log = log.With("clone", c.id)
	c.w = bufio.NewWriterSize(countingWriter{conn, m.cfg.Metrics.WireSent.WithLabelValues(c.id)}, 256*1024)
	r := bufio.NewReaderSize(conn, 64*1024)
	c.bytesSent = m.cfg.Metrics.BytesSent.WithLabelValues(c.id)
	c.filesSent = m.cfg.Metrics.FilesSent.WithLabelValues(c.id)
	if peer.Term > m.cfg.Term {
		m.fence(peer.Term)
		return
	}
	m.mu.Lock()
	if m.fenced {
		m.mu.Unlock()
		return
	}
	m.clones[c] = struct{}{}
	m.mu.Unlock()
	m.kickWatcher()
	defer func() {
		m.mu.Lock()
		delete(m.clones, c)
		m.mu.Unlock()
		m.cfg.Metrics.LagSeq.DeleteLabelValues(c.id)
		m.cfg.Metrics.LagSeconds.DeleteLabelValues(c.id)
	}()
	_ = conn.SetDeadline(time.Time{})

	// The first request decides between resume and manifest.
	_ = conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	f, _, err := c.open.ReadFrame(r, wire.MaxPayload, nil)
	if err != nil {
		log.Warn("clone dropped before its request", "error", err)
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	resumeFrom := uint64(0)
	resume, resumeJournal := false, false
	if f.Type == wire.TResume {
		var rq wire.Resume
		// A clone that followed the journal resumes on it; only a capture master has one.
		if rq.Unmarshal(f.Payload) == nil && rq.Session == m.session && f.Term == m.cfg.Term && (m.cfg.Capture || !rq.Journal) {
			m.mu.Lock()
			resume = f.Seq+1 >= m.first && f.Seq <= m.head
			m.mu.Unlock()
			resumeFrom = f.Seq
			resumeJournal = rq.Journal
		}
	} else if f.Type != wire.TNeedManifest {
		log.Warn("unexpected first request", "type", f.Type.String())
		return
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reqs := make(chan wire.Request, 1024)
	readErr := make(chan error, 1)
	go func() { readErr <- c.readLoop(ctx, r, reqs); cancel() }()

	var err2 error
	if resume {
		log.Info("clone resumes", "from", resumeFrom)
		m.mu.Lock()
		c.acked = core.Position{Term: m.cfg.Term, Seq: resumeFrom}
		c.synced = true
		c.journal = resumeJournal
		m.mu.Unlock()
		c.wmu.Lock()
		err2 = c.send(wire.TResume, resumeFrom, nil)
		c.wmu.Unlock()
		if err2 == nil {
			err2 = c.stream(ctx, resumeFrom+1)
		}
	} else {
		err2 = c.initialSync(ctx, reqs)
	}
	cancel()
	rerr := <-readErr
	if err2 != nil && !errors.Is(err2, context.Canceled) {
		log.Warn("clone connection ended", "error", err2)
	} else if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
		log.Warn("clone connection ended", "error", rerr)
	} else {
		log.Info("clone disconnected")
	}
}

// readLoop handles frames from an authenticated clone: requests go to the
// sender until RequestsDone, acks update its position.
func (c *cloneConn) readLoop(ctx context.Context, r *bufio.Reader, reqs chan<- wire.Request) error {
	m := c.m
	open := true
	defer func() {
		if open {
			close(reqs)
		}
	}()
	var buf []byte
	for {
		// The clone acks at least every heartbeat; a long silence means it
		// is gone (or frozen) and the connection is dropped.
		_ = c.conn.SetReadDeadline(time.Now().Add(bulkTimeout))
		limit := wire.MaxPayload
		if !open {
			limit = wire.MaxAuthPayload
		}
		f, b, err := c.open.ReadFrame(r, limit, buf)
		buf = b
		if err != nil {
			return err
		}
		if f.Term > m.cfg.Term {
			m.fence(f.Term)
			return ErrFenced
		}
		switch f.Type {
		case wire.TRequest:
			if !open {
				return errors.New("request after requests-done")
			}
			var rq wire.Request
			if err := rq.Unmarshal(f.Payload); err != nil {
				return err
			}
			if err := tree.ValidName(rq.Path); err != nil {
				return fmt.Errorf("clone request: %w", err)
			}
			select {
			case reqs <- rq:
			case <-ctx.Done():
				return ctx.Err()
			}
		case wire.TRequestsDone:
			if open {
				open = false
				close(reqs)
			}
		case wire.TAck:
			c.ack(f)
		case wire.TError:
			var em wire.ErrorMsg
			_ = em.Unmarshal(f.Payload)
			return fmt.Errorf("clone reports: %s", em.Msg)
		default:
			return fmt.Errorf("unexpected %s from clone", f.Type)
		}
	}
}

func (c *cloneConn) ack(f wire.Frame) {
	m := c.m
	m.mu.Lock()
	if f.Term == m.cfg.Term && f.Seq <= m.head && f.Seq >= c.acked.Seq {
		c.acked = core.Position{Term: f.Term, Seq: f.Seq}
		if m.acked.Less(c.acked) {
			m.acked = c.acked
		}
		close(m.ackWake)
		m.ackWake = make(chan struct{})
	}
	lag := m.head - c.acked.Seq
	m.mu.Unlock()
	m.cfg.Metrics.LagSeq.WithLabelValues(c.id).Set(float64(lag))
}

// initialSync sends the manifest at snapshot S, serves the clone's block
// requests, then continues with the live stream from S+1.
func (c *cloneConn) initialSync(ctx context.Context, reqs <-chan wire.Request) error {
	m := c.m
	m.mu.Lock()
	snap := make(map[string]*tree.Entry, len(m.cache))
	for k, v := range m.cache {
		snap[k] = v
	}
	s := m.head
	m.mu.Unlock()
	c.wmu.Lock()
	err := tree.EncodeManifest(tree.Sorted(snap), manifestChunk, func(b []byte) error {
		return c.send(wire.TManifestChunk, s, b)
	})
	if err == nil {
		err = c.send(wire.TManifestEnd, s, nil)
	}
	if err == nil {
		err = c.flush()
	}
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("send manifest: %w", err)
	}
	m.log.Info("manifest sent", "clone", c.id, "entries", len(snap), "seq", s)
	for {
		var rq wire.Request
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rq, ok = <-reqs:
		}
		if !ok {
			break
		}
		e := snap[rq.Path]
		if e == nil || e.Type != tree.TypeFile || rq.KnownBlocks != uint64(len(e.Hashes)) {
			return fmt.Errorf("clone requested %q, which is not a file of the manifest", rq.Path)
		}
		c.wmu.Lock()
		err := c.sendFile(s, rq.Path, rq.Ranges, rq.KnownBlocks, rq.Whole, nil)
		if err == nil && len(reqs) == 0 {
			err = c.flush()
		}
		c.wmu.Unlock()
		if err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	c.wmu.Lock()
	err = c.send(wire.TSynced, s, nil)
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	m.mu.Lock()
	c.synced = true
	m.mu.Unlock()
	return c.stream(ctx, s+1)
}

// stream sends ops from seq next on, flushing whenever it catches up so a
// lone change leaves at once, and heartbeats while idle.
func (c *cloneConn) stream(ctx context.Context, next uint64) error {
	m := c.m
	hb := time.NewTicker(heartbeatEvery)
	defer hb.Stop()
	for {
		m.mu.Lock()
		if m.fenced {
			m.mu.Unlock()
			return ErrFenced
		}
		if next < m.first {
			m.mu.Unlock()
			c.wmu.Lock()
			_ = c.send(wire.TResyncRequired, next, nil)
			_ = c.flush()
			c.wmu.Unlock()
			return errors.New("clone fell behind the op log; it will resync")
		}
		var o *op
		if next <= m.head {
			o = m.ops[next-m.first]
		}
		notify := m.notify
		head := m.head
		journal := c.journal
		cutReady := m.cfg.Capture && !journal && m.pause != nil && c.acked.Seq == head && !time.Now().Before(c.cutAt)
		m.mu.Unlock()
		if o != nil {
			c.wmu.Lock()
			var err error
			skip := (o.kind == wire.TJournal) != journal
			if !skip {
				err = c.sendOp(o)
			}
			if err == nil && next == head {
				// Not for this clone's stream (see journal.go): skipped, and the position
				// advanced over it once nothing else follows.
				if skip {
					err = c.send(wire.TNop, o.seq, nil)
				}
				if err == nil {
					err = c.flush()
				}
			}
			c.wmu.Unlock()
			if err != nil {
				return err
			}
			next++
			continue
		}
		c.wmu.Lock()
		err := c.flush()
		c.wmu.Unlock()
		if err != nil {
			return err
		}
		if cutReady {
			if err := c.cut(ctx, &next); err != nil {
				if !errors.Is(err, errCutAbandoned) {
					return err
				}
				m.log.Warn("cut-over to the journal failed; the clone stays on the watcher's stream for now", "clone", c.id, "error", err)
				c.cutAt = time.Now().Add(cutRetry)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-notify:
		case <-hb.C:
			c.wmu.Lock()
			err := c.send(wire.THeartbeat, head, nil)
			if err == nil {
				err = c.flush()
			}
			c.wmu.Unlock()
			if err != nil {
				return err
			}
		}
	}
}

func metaOf(e *tree.Entry) wire.Meta {
	return wire.Meta{Path: e.Path, Mode: uint32(e.Mode), MtimeNs: e.MtimeNs, UID: e.UID, GID: e.GID}
}

func (c *cloneConn) sendOp(o *op) error {
	switch o.kind {
	case wire.TDelete, wire.TSymlink, wire.TMkdir:
		c.reads.forget(o.path) // what was sent went to a file that is gone
	case wire.TRename:
		c.reads.forget(o.path)
		c.reads.forget(o.to)
	}
	switch o.kind {
	case wire.TFileBegin:
		return c.sendFile(o.seq, o.path, o.ranges, o.known, o.whole, o)
	case wire.TMkdir, wire.TMeta:
		m := metaOf(o.entry)
		return c.send(o.kind, o.seq, m.Marshal())
	case wire.TSymlink:
		e := o.entry
		return c.send(o.kind, o.seq, (&wire.Symlink{Path: e.Path, Target: e.Target, MtimeNs: e.MtimeNs, UID: e.UID, GID: e.GID}).Marshal())
	case wire.TDelete:
		return c.send(o.kind, o.seq, (&wire.PathMsg{Path: o.path}).Marshal())
	case wire.TRename:
		return c.send(o.kind, o.seq, (&wire.Rename{From: o.path, To: o.to}).Marshal())
	case wire.TJournal:
		return c.send(o.kind, o.seq, o.payload)
	}
	return fmt.Errorf("unknown op %s", o.kind)
}

// sendFile sends the requested blocks of a file as it is now, plus any
// blocks past known (the file grew). A file that vanished is reported gone;
// the op that removed it follows. For a live op (o set), blocks this
// connection already sent from a read that began after o was cut are left
// out: that data is already newer than o (see sentReads).
func (c *cloneConn) sendFile(seq uint64, name string, ranges []wire.Range, known uint64, whole bool, o *op) error {
	readAt := time.Now() // before the open: every byte read below is at least this recent
	f, err := c.m.open.Open(name)
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = errors.New("not a regular file")
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		c.reads.forget(name)
		return c.send(wire.TFileGone, seq, (&wire.PathMsg{Path: name}).Marshal())
	}
	defer f.Close()
	e := tree.FromInfo(name, fi)
	nb := uint64(tree.Blocks(e.Size))
	if whole {
		// The clone builds a new file from what this op sends: it needs every block.
		c.reads.forget(name)
		ranges = []wire.Range{{Start: 0, Count: nb}}
	} else if nb > known {
		ranges = append(append([]wire.Range(nil), ranges...), wire.Range{Start: known, Count: nb - known})
	}
	if o != nil && !whole {
		ranges = c.reads.uncovered(name, ranges, o.at)
	}
	begin := wire.FileBegin{Path: name, Size: e.Size, Mode: uint32(e.Mode), MtimeNs: e.MtimeNs, UID: e.UID, GID: e.GID, Whole: whole}
	if err := c.send(wire.TFileBegin, seq, begin.Marshal()); err != nil {
		return err
	}
	var sent int64
	err = readBlocks(f, name, ranges, e.Size, c.rbuf, func(off int64, data []byte) error {
		hashes := c.hashes[:0]
		for o := 0; o < len(data); o += tree.BlockSize {
			hashes = append(hashes, xxh3.Hash(data[o:min(o+tree.BlockSize, len(data))]))
		}
		c.hashes = hashes
		fd := wire.FileData{Offset: off, Hashes: hashes, Data: data}
		c.hdr = fd.AppendHeader(c.hdr[:0])
		sent += int64(len(data))
		if full := uint64(len(data) / tree.BlockSize); full > 0 { // the last, partial block may grow
			c.reads.remember(name, readAt, wire.Range{Start: uint64(off / tree.BlockSize), Count: full})
		}
		return c.seal.WriteFrameParts(c.w, wire.TFileData, c.m.cfg.Term, seq, c.hdr, data)
	})
	if err != nil {
		return err
	}
	if err := c.send(wire.TFileEnd, seq, nil); err != nil {
		return err
	}
	c.m.mu.Lock()
	c.sent += sent
	c.files++
	c.m.mu.Unlock()
	c.bytesSent.Add(float64(sent))
	c.filesSent.Inc()
	return nil
}

// readBlocks reads the block ranges of f (of size bytes when opened) in
// pieces of up to len(buf) bytes and gives each to emit. A range of a file
// that shrank meanwhile ends early; the op of the change follows.
func readBlocks(f *os.File, name string, ranges []wire.Range, size int64, buf []byte, emit func(off int64, data []byte) error) error {
	nb := uint64(tree.Blocks(size))
	for _, r := range ranges {
		start, end := r.Start, min(r.Start+r.Count, nb)
		for start < end {
			n := min(end-start, uint64(len(buf)/tree.BlockSize))
			off := int64(start) * tree.BlockSize
			// Never past the size sent in FileBegin: the clone refuses
			// data beyond it. What grew is in the op of the change.
			b := buf[:min(int64(n)*tree.BlockSize, size-off)]
			k, err := f.ReadAt(b, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if k == 0 {
				break
			}
			if err := emit(off, b[:k]); err != nil {
				return err
			}
			if k < len(b) {
				break
			}
			start += n
		}
	}
	return nil
}

// countingWriter counts bytes that reach the connection (framing included),
// which is what the delta benchmark compares with the bytes changed, and
// gives every write its own deadline: a clone that takes nothing for
// bulkTimeout is dead, one that is merely slow is not.
type countingWriter struct {
	w net.Conn
	c interface{ Add(float64) }
}

func (cw countingWriter) Write(p []byte) (int, error) {
	_ = cw.w.SetWriteDeadline(time.Now().Add(bulkTimeout))
	n, err := cw.w.Write(p)
	cw.c.Add(float64(n))
	return n, err
}
