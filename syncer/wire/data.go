package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"

	"github.com/zeebo/xxh3"
)

// The receiver of bulk data reads the data of a FileData frame from the
// connection straight into the buffer it keeps (ReadDataFrame), not into a
// frame buffer first and then into its own: one copy of every byte less.

// directRead is the size from which data not yet buffered is read from the
// connection itself rather than through the buffered reader.
const directRead = 32 << 10

// ReadDataFrame reads one frame like ReadFrame, from r or, for the bulk of
// large data, from raw, the reader under r. A FileData frame comes back
// decoded, with Payload nil and the hashes in a new slice: its body (the
// frame from its type byte through the data) was read into a buffer from
// get(size), of at least size bytes, so that it is checksummed in one
// piece, and fd.Data is the tail of that buffer. A FileData frame too odd
// for that (its header not in r's buffer) is read by ReadFrame, decoded by
// FileData.Unmarshal and its data copied into a buffer from get. Any other
// frame comes back as from ReadFrame, its payload in buf.
func ReadDataFrame(r *bufio.Reader, raw io.Reader, limit int, buf []byte, get func(int) []byte) (Frame, FileData, []byte, error) {
	var fd FileData
	h, err := r.Peek(HeaderSize)
	if err != nil {
		return slowData(r, limit, buf, get) // errors as ReadFrame's
	}
	if Type(h[4]) != TFileData {
		f, b, err := ReadFrame(r, limit, buf)
		return f, fd, b, err
	}
	n := int(binary.BigEndian.Uint32(h[0:4]))
	if limit < 0 || uint64(n) > uint64(limit) {
		f, b, err := ReadFrame(r, limit, buf)
		return f, fd, b, err
	}
	// Decode the FileData header from the buffered bytes, if it is there.
	want := HeaderSize + min(n, 2*binary.MaxVarintLen64)
	p, err := r.Peek(want)
	if err != nil {
		return slowData(r, limit, buf, get)
	}
	d := NewDec(p[HeaderSize:])
	fd.Offset = d.Varint()
	count := d.Uvarint()
	if d.Err() != nil || fd.Offset < 0 || count > uint64(n)/8 {
		return slowData(r, limit, buf, get)
	}
	pre := want - len(d.B) // bytes up to the hashes
	hl := pre + 8*int(count) + binary.MaxVarintLen64
	if hl > r.Size() {
		return slowData(r, limit, buf, get)
	}
	if p, err = r.Peek(min(hl, HeaderSize+n)); err != nil {
		return slowData(r, limit, buf, get)
	}
	d = NewDec(p[pre:])
	fd.Hashes = make([]uint64, count)
	for i := range fd.Hashes {
		fd.Hashes[i] = d.U64()
	}
	dl := d.Uvarint()
	if d.Err() != nil {
		return slowData(r, limit, buf, get)
	}
	hdrEnd := len(p) - len(d.B) // frame bytes before the data
	if uint64(n) != uint64(hdrEnd-HeaderSize)+dl {
		return slowData(r, limit, buf, get) // reports the malformed payload
	}
	body := get(hdrEnd - 4 + int(dl))
	body = body[:hdrEnd-4+int(dl)]
	copy(body, p[4:hdrEnd])
	if _, err := r.Discard(hdrEnd); err != nil {
		return Frame{}, fd, buf, err
	}
	data := body[hdrEnd-4:]
	k := copy(data, peekAll(r, len(data)))
	_, _ = r.Discard(k)
	if rest := data[k:]; len(rest) > 0 {
		src := io.Reader(r)
		if len(rest) >= directRead && r.Buffered() == 0 {
			src = raw
		}
		if _, err := io.ReadFull(src, rest); err != nil {
			return Frame{}, fd, buf, unexpected(err)
		}
	}
	var tr [TrailerSize]byte
	if _, err := io.ReadFull(r, tr[:]); err != nil {
		return Frame{}, fd, buf, unexpected(err)
	}
	if xxh3.Hash(body) != binary.BigEndian.Uint64(tr[:]) {
		return Frame{}, fd, buf, ErrChecksum
	}
	fd.Data = data
	f := Frame{Type: TFileData, Term: binary.BigEndian.Uint64(body[1:9]), Seq: binary.BigEndian.Uint64(body[9:17])}
	return f, fd, buf, nil
}

// peekAll returns up to n bytes already buffered in r.
func peekAll(r *bufio.Reader, n int) []byte {
	p, _ := r.Peek(min(n, r.Buffered()))
	return p
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// slowData reads a FileData frame the ordinary way.
func slowData(r *bufio.Reader, limit int, buf []byte, get func(int) []byte) (Frame, FileData, []byte, error) {
	var fd FileData
	f, b, err := ReadFrame(r, limit, buf)
	if err != nil || f.Type != TFileData {
		return f, fd, b, err
	}
	if err := fd.Unmarshal(f.Payload); err != nil {
		return f, fd, b, err
	}
	data := get(len(fd.Data))[:len(fd.Data)]
	copy(data, fd.Data)
	fd.Data = data
	f.Payload = nil
	return f, fd, b, nil
}
