// Package wire is the replication protocol's framing: every message travels in
// one length-prefixed frame that carries the sender's term and a sequence
// number, and ends with an xxh3 checksum of everything before it.
//
// Frame layout (big endian):
//
//	[0:4]    payload length n (bounded by the reader's limit)
//	[4]      message type
//	[5:13]   term
//	[13:21]  sequence
//	[21:21+n] payload
//	[21+n:29+n] xxh3-64 of bytes [4:21+n]
//
// Decisions:
//   - The length is checked against a limit before anything is allocated, so a
//     peer cannot make us allocate more than the limit (16 MiB by default; only
//     authenticated peers get that, see ReadFrame's limit argument).
//   - The checksum covers type, term, seq and payload, so a flipped bit
//     anywhere but in the length is caught; a flipped length either exceeds the
//     limit or misaligns the checksum, which is caught too. After a corrupt
//     frame the stream cannot be trusted to be aligned, so the receiver drops
//     the connection and re-requests from its last applied position (resume).
//   - Term and seq are in the header, not the payload, so fencing is checked
//     before any payload is interpreted.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/xxh3"
)

// HeaderSize and TrailerSize frame every payload.
const (
	HeaderSize  = 21
	TrailerSize = 8
	// MaxPayload bounds a data frame from an authenticated peer.
	MaxPayload = 16 << 20
	// MaxAuthPayload bounds frames read before the peer proved the secret.
	MaxAuthPayload = 4 << 10
)

// Errors a reader reports; callers use errors.Is.
var (
	ErrTooLarge = errors.New("wire: frame exceeds size limit")
	ErrChecksum = errors.New("wire: frame checksum mismatch")
)

// Type identifies a message.
type Type uint8

// Message types. Values are part of the protocol: append only.
const (
	THello Type = iota + 1
	TAuth
	TAuthOK
	TResume
	TNeedManifest
	TManifestChunk
	TManifestEnd
	TRequest
	TRequestsDone
	TFileBegin
	TFileData
	TFileEnd
	TFileGone
	TMkdir
	TSymlink
	TDelete
	TRename
	TMeta
	TSynced
	THeartbeat
	TAck
	TError
	TResyncRequired
	// TJournal carries one operation of the master's capture journal (issue 16): applied
	// in order, a prefix of these is a state the master's directory really was in.
	TJournal
	// TNop advances a clone's position over operations that are not for its stream (a
	// clone following the journal skips the watcher's, and the other way round).
	TNop
	// TCut tells a clone that its copy now equals the master's directory at the frame's
	// sequence (taken with the app's writes paused) and that the journal follows.
	TCut
	tMax
)

var typeNames = [...]string{"", "hello", "auth", "auth-ok", "resume", "need-manifest", "manifest-chunk",
	"manifest-end", "request", "requests-done", "file-begin", "file-data", "file-end", "file-gone", "mkdir",
	"symlink", "delete", "rename", "meta", "synced", "heartbeat", "ack", "error", "resync-required",
	"journal", "nop", "cut"}

func (t Type) String() string {
	if t > 0 && t < tMax {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Valid reports whether t is a known message type.
func (t Type) Valid() bool { return t > 0 && t < tMax }

// Frame is one decoded message. Payload aliases the reader's buffer only
// until the next ReadFrame when read with a reused buffer.
type Frame struct {
	Type    Type
	Term    uint64
	Seq     uint64
	Payload []byte
}

// AppendFrame appends the encoded frame to dst.
func AppendFrame(dst []byte, f Frame) []byte {
	start := len(dst)
	var h [HeaderSize]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(f.Payload)))
	h[4] = byte(f.Type)
	binary.BigEndian.PutUint64(h[5:13], f.Term)
	binary.BigEndian.PutUint64(h[13:21], f.Seq)
	dst = append(dst, h[:]...)
	dst = append(dst, f.Payload...)
	sum := xxh3.Hash(dst[start+4:])
	return binary.BigEndian.AppendUint64(dst, sum)
}

// WriteFrame writes one frame to w in a single Write call.
func WriteFrame(w io.Writer, f Frame) error {
	if len(f.Payload) > MaxPayload {
		return fmt.Errorf("write %s frame of %d bytes: %w", f.Type, len(f.Payload), ErrTooLarge)
	}
	buf := AppendFrame(make([]byte, 0, HeaderSize+len(f.Payload)+TrailerSize), f)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write %s frame: %w", f.Type, err)
	}
	return nil
}

// WriteFrameParts writes a frame whose payload is the concatenation of
// parts without assembling it first: block data goes from the read buffer
// to the writer without another copy or allocation.
func WriteFrameParts(w io.Writer, t Type, term, seq uint64, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxPayload {
		return fmt.Errorf("write %s frame of %d bytes: %w", t, n, ErrTooLarge)
	}
	var h [HeaderSize]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(n))
	h[4] = byte(t)
	binary.BigEndian.PutUint64(h[5:13], term)
	binary.BigEndian.PutUint64(h[13:21], seq)
	x := xxh3.New()
	_, _ = x.Write(h[4:])
	for _, p := range parts {
		_, _ = x.Write(p)
	}
	if _, err := w.Write(h[:]); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			return fmt.Errorf("write %s frame: %w", t, err)
		}
	}
	var tr [TrailerSize]byte
	binary.BigEndian.PutUint64(tr[:], x.Sum64())
	if _, err := w.Write(tr[:]); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

// ReadFrame reads one frame whose payload is at most limit bytes. buf is
// reused when large enough; the returned payload aliases it.
func ReadFrame(r io.Reader, limit int, buf []byte) (Frame, []byte, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, buf, err
	}
	n := binary.BigEndian.Uint32(h[0:4])
	if limit < 0 || uint64(n) > uint64(limit) {
		return Frame{}, buf, fmt.Errorf("frame of %d bytes, limit %d: %w", n, limit, ErrTooLarge)
	}
	need := HeaderSize + int(n) + TrailerSize
	if cap(buf) < need {
		buf = make([]byte, need)
	}
	buf = buf[:need]
	copy(buf, h[:])
	if _, err := io.ReadFull(r, buf[HeaderSize:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, buf, err
	}
	return decodeChecked(buf, need)
}

// Decode parses one complete frame from b (as produced by AppendFrame) and
// returns the number of bytes it used. It never reads beyond b.
func Decode(b []byte, limit int) (Frame, int, error) {
	if len(b) < HeaderSize {
		return Frame{}, 0, io.ErrUnexpectedEOF
	}
	n := binary.BigEndian.Uint32(b[0:4])
	if limit < 0 || uint64(n) > uint64(limit) {
		return Frame{}, 0, fmt.Errorf("frame of %d bytes, limit %d: %w", n, limit, ErrTooLarge)
	}
	need := HeaderSize + int(n) + TrailerSize
	if len(b) < need {
		return Frame{}, 0, io.ErrUnexpectedEOF
	}
	f, _, err := decodeChecked(b[:need], need)
	return f, need, err
}

func decodeChecked(buf []byte, need int) (Frame, []byte, error) {
	body := buf[4 : need-TrailerSize]
	want := binary.BigEndian.Uint64(buf[need-TrailerSize : need])
	if xxh3.Hash(body) != want {
		return Frame{}, buf, ErrChecksum
	}
	f := Frame{
		Type:    Type(buf[4]),
		Term:    binary.BigEndian.Uint64(buf[5:13]),
		Seq:     binary.BigEndian.Uint64(buf[13:21]),
		Payload: buf[HeaderSize : need-TrailerSize],
	}
	if !f.Type.Valid() {
		return Frame{}, buf, fmt.Errorf("wire: unknown message %s", f.Type)
	}
	return f, buf, nil
}
