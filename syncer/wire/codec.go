package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformed reports a payload that does not decode as its message type.
var ErrMalformed = errors.New("wire: malformed payload")

// Enc appends primitive values to a payload. Variable-length integers keep
// manifests of many small files compact.
type Enc struct{ B []byte }

// Uvarint appends v as an unsigned varint.
func (e *Enc) Uvarint(v uint64) { e.B = binary.AppendUvarint(e.B, v) }

// Varint appends v as a signed varint.
func (e *Enc) Varint(v int64) { e.B = binary.AppendVarint(e.B, v) }

// U64 appends v as 8 big-endian bytes (hashes do not compress as varints).
func (e *Enc) U64(v uint64) { e.B = binary.BigEndian.AppendUint64(e.B, v) }

// Bytes appends a length-prefixed byte string.
func (e *Enc) Bytes(b []byte) { e.Uvarint(uint64(len(b))); e.B = append(e.B, b...) }

// String appends a length-prefixed string.
func (e *Enc) String(s string) { e.Uvarint(uint64(len(s))); e.B = append(e.B, s...) }

// Bool appends one byte.
func (e *Enc) Bool(v bool) {
	if v {
		e.B = append(e.B, 1)
	} else {
		e.B = append(e.B, 0)
	}
}

// Dec reads values appended by Enc. The first error sticks, so a message
// decoder can read all fields and check Err once; no read ever goes past the
// buffer or allocates more than the buffer's remaining length.
type Dec struct {
	B   []byte
	err error
}

// NewDec returns a decoder over b.
func NewDec(b []byte) *Dec { return &Dec{B: b} }

// Err is the first decoding error, wrapped in ErrMalformed.
func (d *Dec) Err() error { return d.err }

func (d *Dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", ErrMalformed, what)
	}
	d.B = nil
}

// Uvarint reads an unsigned varint.
func (d *Dec) Uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Varint reads a signed varint.
func (d *Dec) Varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.B)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.B = d.B[n:]
	return v
}

// U64 reads 8 big-endian bytes.
func (d *Dec) U64() uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.B) < 8 {
		d.fail("u64")
		return 0
	}
	v := binary.BigEndian.Uint64(d.B)
	d.B = d.B[8:]
	return v
}

// Bytes reads a length-prefixed byte string; the result aliases the buffer.
func (d *Dec) Bytes() []byte {
	n := d.Uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.B)) {
		d.fail("length")
		return nil
	}
	b := d.B[:n:n]
	d.B = d.B[n:]
	return b
}

// String reads a length-prefixed string.
func (d *Dec) String() string { return string(d.Bytes()) }

// Bool reads one byte that must be 0 or 1.
func (d *Dec) Bool() bool {
	if d.err != nil {
		return false
	}
	if len(d.B) < 1 || d.B[0] > 1 {
		d.fail("bool")
		return false
	}
	v := d.B[0] == 1
	d.B = d.B[1:]
	return v
}

// Count reads an element count and rejects counts that could not possibly
// fit in the rest of the buffer at minSize bytes each, so a forged count
// cannot make the caller allocate.
func (d *Dec) Count(minSize int) int {
	n := d.Uvarint()
	if d.err != nil {
		return 0
	}
	if minSize < 1 {
		minSize = 1
	}
	if n > uint64(len(d.B)/minSize) {
		d.fail("count")
		return 0
	}
	return int(n)
}

// Fixed reads exactly len(dst) raw bytes.
func (d *Dec) Fixed(dst []byte) {
	if d.err != nil {
		return
	}
	if len(d.B) < len(dst) {
		d.fail("fixed field")
		return
	}
	copy(dst, d.B)
	d.B = d.B[len(dst):]
}

// Done fails the decoder if bytes remain: trailing garbage is an error, not
// something to ignore.
func (d *Dec) Done() error {
	if d.err == nil && len(d.B) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}
