package wire

// Every frame after the handshake is sealed with AES-256-GCM, so a relay on
// the path can neither read nor forge, replay, reorder or drop frames
// unnoticed. (The xxh3 trailer of the clear frames only catches accidents.)
//
// Sealed frame layout (big endian):
//
//	[0:4]        payload length n (bounded by the reader's limit), additional data
//	[4:21+n]     ciphertext of type, term, seq and payload
//	[21+n:37+n]  GCM tag
//
// Decisions:
//   - Keys come from HKDF-SHA256 over the shared secret, salted with both
//     sides' fresh nonces and bound to everything the handshake said in the
//     clear (Transcript): the secret never crosses the wire, every connection
//     has keys of its own, and a relay that alters any handshake field only
//     makes the two sides derive different keys. The same derivation yields
//     both handshake MACs, so both sides compute the handshake once, the same
//     way (DeriveKeys).
//   - One key per direction, and the GCM nonce of a frame is its implicit
//     index in its direction (0, 1, 2, ...), never sent: a replayed,
//     reordered, dropped or injected frame is opened with the wrong nonce and
//     fails authentication. After a failure the stream is dead for good.
//   - AES-GCM rather than ChaCha20-Poly1305: the standard library's, with
//     AES-NI/PMULL it is the faster of the two on the servers Bedrock runs
//     on, and it needs no dependency beyond crypto/*.
//   - The length stays in the clear (the reader must know how much to read
//     before it can authenticate) but is authenticated as additional data,
//     and checked against the limit before anything is allocated.

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// TagSize is the authentication tag that ends every sealed frame.
const TagSize = 16

// bodyHeader is the sealed part of the header: type, term, seq.
const bodyHeader = HeaderSize - 4

// ErrAuthFrame reports a sealed frame that does not authenticate: altered,
// injected, replayed, reordered, or after a dropped frame.
var ErrAuthFrame = errors.New("wire: frame authentication failed")

// Transcript is everything the handshake says in the clear. Both sides fill
// it from what they sent and received; any difference (a relay changed a
// field) gives different keys, and the handshake MACs do not match.
type Transcript struct {
	Version     uint64
	Session     uint64
	ServerNonce [NonceSize]byte
	ClientNonce [NonceSize]byte
	ServerTerm  uint64 // Hello frame's term
	ServerSeq   uint64 // Hello frame's seq
	ClientTerm  uint64 // Auth frame's term
	ClientSeq   uint64 // Auth frame's seq
	ClientID    string
}

func (t *Transcript) encode() string {
	e := Enc{}
	e.String("bedrock-sync v1 transcript")
	e.Uvarint(t.Version)
	e.U64(t.Session)
	e.B = append(e.B, t.ServerNonce[:]...)
	e.B = append(e.B, t.ClientNonce[:]...)
	e.U64(t.ServerTerm)
	e.U64(t.ServerSeq)
	e.U64(t.ClientTerm)
	e.U64(t.ClientSeq)
	e.String(t.ClientID)
	return string(e.B)
}

// Keys is what one handshake derives from the shared secret.
type Keys struct {
	// ClientMAC is the client's proof (Auth), ServerMAC the server's
	// (AuthOK); distinct, so a proof cannot be reflected back.
	ClientMAC, ServerMAC [NonceSize]byte
	toServer, toClient   []byte
}

// DeriveKeys derives the handshake proofs and the two stream keys of one
// connection from the shared secret and the transcript.
func DeriveKeys(secret []byte, t Transcript) (Keys, error) {
	salt := append(append(make([]byte, 0, 2*NonceSize), t.ServerNonce[:]...), t.ClientNonce[:]...)
	prk, err := hkdf.Extract(sha256.New, secret, salt)
	if err != nil {
		return Keys{}, fmt.Errorf("wire: derive keys: %w", err)
	}
	info := t.encode()
	var k Keys
	for _, out := range []struct {
		label string
		dst   *[]byte
	}{{"client mac", nil}, {"server mac", nil}, {"client to server", &k.toServer}, {"server to client", &k.toClient}} {
		b, err := hkdf.Expand(sha256.New, prk, out.label+"\x00"+info, 32)
		if err != nil {
			return Keys{}, fmt.Errorf("wire: derive keys: %w", err)
		}
		switch {
		case out.dst != nil:
			*out.dst = b
		case out.label == "client mac":
			copy(k.ClientMAC[:], b)
		default:
			copy(k.ServerMAC[:], b)
		}
	}
	return k, nil
}

// CheckMAC compares a received proof in constant time.
func CheckMAC(want, got [NonceSize]byte) bool { return hmac.Equal(want[:], got[:]) }

// Client returns the client's sealer (to the server) and opener (from it).
func (k Keys) Client() (*Sealer, *Opener, error) { return pair(k.toServer, k.toClient) }

// Server returns the server's sealer (to the client) and opener (from it).
func (k Keys) Server() (*Sealer, *Opener, error) { return pair(k.toClient, k.toServer) }

func pair(out, in []byte) (*Sealer, *Opener, error) {
	a, err := newAEAD(out)
	if err != nil {
		return nil, nil, err
	}
	b, err := newAEAD(in)
	if err != nil {
		return nil, nil, err
	}
	return &Sealer{aead: a}, &Opener{aead: b}, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("wire: cipher: %w", err)
	}
	a, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, fmt.Errorf("wire: cipher: %w", err)
	}
	return a, nil
}

// counterNonce is the GCM nonce of frame number n of a direction.
func counterNonce(n uint64) [12]byte {
	var b [12]byte
	binary.BigEndian.PutUint64(b[4:], n)
	return b
}

// ErrExhausted reports a direction that sent 2^64-1 frames (never in
// practice): its nonce must not wrap.
var ErrExhausted = errors.New("wire: frame counter exhausted")

// Sealer seals the frames of one direction. Not safe for concurrent use:
// the frame order is the nonce order, so writers serialize anyway.
type Sealer struct {
	aead cipher.AEAD
	n    uint64
	buf  []byte
	err  error
}

// Append appends the sealed frame to dst.
func (s *Sealer) Append(dst []byte, f Frame) ([]byte, error) {
	return s.appendParts(dst, f.Type, f.Term, f.Seq, f.Payload)
}

func (s *Sealer) appendParts(dst []byte, t Type, term, seq uint64, parts ...[]byte) ([]byte, error) {
	if s.err != nil {
		return dst, s.err
	}
	if s.n == ^uint64(0) {
		s.err = ErrExhausted
		return dst, s.err
	}
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxPayload {
		return dst, fmt.Errorf("write %s frame of %d bytes: %w", t, n, ErrTooLarge)
	}
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	body := len(dst)
	dst = append(dst, byte(t))
	dst = binary.BigEndian.AppendUint64(dst, term)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	for _, p := range parts {
		dst = append(dst, p...)
	}
	dst = slices.Grow(dst, TagSize)
	nonce := counterNonce(s.n)
	s.n++
	// Sealed in place: the ciphertext overwrites the plaintext just copied,
	// the tag goes into the capacity grown for it.
	out := s.aead.Seal(dst[body:body], nonce[:], dst[body:], dst[start:body])
	return dst[:body+len(out)], nil
}

// WriteFrame seals f and writes it to w in a single Write call.
func (s *Sealer) WriteFrame(w io.Writer, f Frame) error {
	return s.WriteFrameParts(w, f.Type, f.Term, f.Seq, f.Payload)
}

// WriteFrameParts seals a frame whose payload is the concatenation of parts
// and writes it in one Write call (through a buffer the sealer keeps).
func (s *Sealer) WriteFrameParts(w io.Writer, t Type, term, seq uint64, parts ...[]byte) error {
	b, err := s.appendParts(s.buf[:0], t, term, seq, parts...)
	if err != nil {
		return err
	}
	s.buf = b
	if _, err := w.Write(b); err != nil {
		s.err = fmt.Errorf("write %s frame: %w", t, err) // the peer's counter moved on, or not: the stream is done
		return s.err
	}
	return nil
}

// Opener opens the sealed frames of one direction, in order. After any
// error it refuses everything: a stream that failed once cannot be trusted
// to be aligned or complete.
type Opener struct {
	aead cipher.AEAD
	n    uint64
	err  error
}

// SmallFrame is the payload size up to which ReadDataFrame reads a frame
// into the frame buffer; larger ones go straight into a buffer from get.
const SmallFrame = 4 << 10

// open authenticates and decrypts b (sealed body and tag) in place, given
// the clear length prefix, and returns the frame; the payload aliases b.
func (o *Opener) open(prefix [4]byte, b []byte) (Frame, error) {
	if o.err != nil {
		return Frame{}, o.err
	}
	nonce := counterNonce(o.n)
	plain, err := o.aead.Open(b[:0], nonce[:], b, prefix[:])
	if err != nil || len(plain) < bodyHeader {
		o.err = ErrAuthFrame
		return Frame{}, o.err
	}
	o.n++
	f := Frame{
		Type:    Type(plain[0]),
		Term:    binary.BigEndian.Uint64(plain[1:9]),
		Seq:     binary.BigEndian.Uint64(plain[9:17]),
		Payload: plain[bodyHeader:],
	}
	if !f.Type.Valid() {
		o.err = fmt.Errorf("wire: unknown message %s", f.Type)
		return Frame{}, o.err
	}
	return f, nil
}

func (o *Opener) fail(err error) error {
	if o.err == nil && !errors.Is(err, io.EOF) {
		o.err = err
	}
	return err
}

// readPrefix reads and checks the clear length.
func (o *Opener) readPrefix(r io.Reader, limit int) ([4]byte, int, error) {
	var h [4]byte
	if o.err != nil {
		return h, 0, o.err
	}
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return h, 0, o.fail(err)
	}
	n := binary.BigEndian.Uint32(h[:])
	if limit < 0 || uint64(n) > uint64(limit) {
		return h, 0, o.fail(fmt.Errorf("frame of %d bytes, limit %d: %w", n, limit, ErrTooLarge))
	}
	return h, int(n), nil
}

// ReadFrame reads and opens one frame whose payload is at most limit bytes.
// buf is reused when large enough; the returned payload aliases it.
func (o *Opener) ReadFrame(r io.Reader, limit int, buf []byte) (Frame, []byte, error) {
	h, n, err := o.readPrefix(r, limit)
	if err != nil {
		return Frame{}, buf, err
	}
	need := bodyHeader + n + TagSize
	if cap(buf) < need {
		buf = make([]byte, need)
	}
	buf = buf[:need]
	if _, err := io.ReadFull(r, buf); err != nil {
		return Frame{}, buf, o.fail(unexpected(err))
	}
	f, err := o.open(h, buf)
	return f, buf, err
}

// Decode opens one complete sealed frame from b and returns the number of
// bytes it used. It never reads beyond b; b is decrypted in place.
func (o *Opener) Decode(b []byte, limit int) (Frame, int, error) {
	if len(b) < 4 {
		return Frame{}, 0, io.ErrUnexpectedEOF
	}
	n := binary.BigEndian.Uint32(b[0:4])
	if limit < 0 || uint64(n) > uint64(limit) {
		return Frame{}, 0, o.fail(fmt.Errorf("frame of %d bytes, limit %d: %w", n, limit, ErrTooLarge))
	}
	need := HeaderSize + int(n) + TagSize
	if len(b) < need {
		return Frame{}, 0, io.ErrUnexpectedEOF
	}
	f, err := o.open([4]byte(b[0:4]), b[4:need])
	return f, need, err
}

// ReadDataFrame reads and opens one frame like ReadFrame, from r or, for
// the bulk of large data, from raw, the reader under r. A frame of more
// than SmallFrame bytes is read into a buffer from get(size), of at least
// size bytes, and opened in place there: a FileData frame comes back
// decoded, with Payload nil and fd.Data the tail of that buffer, so that
// its data is neither copied into a frame buffer first nor kept in one.
// A smaller FileData frame has its data copied into a buffer from get. Any
// other frame comes back as from ReadFrame, its payload in buf.
func (o *Opener) ReadDataFrame(r *bufio.Reader, raw io.Reader, limit int, buf []byte, get func(int) []byte) (Frame, FileData, []byte, error) {
	var fd FileData
	h, n, err := o.readPrefix(r, limit)
	if err != nil {
		return Frame{}, fd, buf, err
	}
	need := bodyHeader + n + TagSize
	large := n > SmallFrame
	var b []byte
	if large {
		b = get(need)[:need]
	} else {
		if cap(buf) < need {
			buf = make([]byte, need)
		}
		b = buf[:need]
	}
	k := copy(b, peekAll(r, need))
	_, _ = r.Discard(k)
	if rest := b[k:]; len(rest) > 0 {
		src := io.Reader(r)
		if len(rest) >= directRead && r.Buffered() == 0 {
			src = raw
		}
		if _, err := io.ReadFull(src, rest); err != nil {
			return Frame{}, fd, buf, o.fail(unexpected(err))
		}
	}
	f, err := o.open(h, b)
	if err != nil {
		return Frame{}, fd, buf, err
	}
	if f.Type != TFileData {
		if large {
			buf = append(buf[:0], f.Payload...)
			f.Payload = buf
		}
		return f, fd, buf, nil
	}
	if err := fd.Unmarshal(f.Payload); err != nil {
		return f, fd, buf, err
	}
	if !large {
		data := get(len(fd.Data))[:len(fd.Data)]
		copy(data, fd.Data)
		fd.Data = data
	}
	f.Payload = nil
	return f, fd, buf, nil
}
