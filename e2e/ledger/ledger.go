// Package ledger is the format of the e2e tests' second app with dependent files (issue 16):
// an append-only log of records and an index rewritten in place that says how much of the log
// is committed, with the CRC-32C of that prefix. A commit appends a record to the log and makes
// it durable, then rewrites the index and makes it durable; only then is it acknowledged.
//
// Neither file means anything without the other: an index that runs past the log or whose
// checksum does not match the log's prefix is a state no crash of the writer's own disk can
// produce (the log was durable before the index named it). A replica that took the index from
// a later moment than the log, as a watcher reading files when it sends them can, fails Verify;
// one that holds a prefix of the writer's history never does. SQLite hides such a state behind
// its own recovery more often than not; this format shows every one.
package ledger

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"
	"time"
)

// The files, in the app's data dir.
const (
	LogFile   = "ledger.log"
	IndexFile = "ledger.idx"
)

// IndexSize is the index's fixed length: one write at offset 0 rewrites it whole.
const IndexSize = 128

var table = crc32.MakeTable(crc32.Castagnoli)

// Index is the committed extent of the log.
type Index struct {
	Count uint64 // records committed: ids 1..Count
	Len   int64  // bytes of the log they occupy
	CRC   uint32 // CRC-32C of those bytes
}

// Record is one committed transaction.
type Record struct {
	ID     uint64
	Term   uint64
	Writer string
	At     time.Time
}

// Update extends a CRC-32C of a log prefix with the bytes after it.
func Update(crc uint32, b []byte) uint32 { return crc32.Update(crc, table, b) }

// Encode returns the index's on-disk form: a line with its own checksum, padded to IndexSize.
func (x Index) Encode() []byte {
	body := fmt.Sprintf("ledger v1 count=%d len=%d crc=%08x", x.Count, x.Len, x.CRC)
	line := fmt.Sprintf("%s sum=%08x\n", body, crc32.Checksum([]byte(body), table))
	b := bytes.Repeat([]byte{' '}, IndexSize)
	copy(b, line)
	b[IndexSize-1] = '\n'
	return b
}

// DecodeIndex parses an index file; an empty one is the empty ledger.
func DecodeIndex(b []byte) (Index, error) {
	if len(b) == 0 {
		return Index{}, nil
	}
	if len(b) != IndexSize {
		return Index{}, fmt.Errorf("index is %d bytes, want %d", len(b), IndexSize)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	body, sum, ok := strings.Cut(line, " sum=")
	if !ok || fmt.Sprintf("%08x", crc32.Checksum([]byte(body), table)) != sum {
		return Index{}, fmt.Errorf("index checksum does not match: %q", line)
	}
	var x Index
	if _, err := fmt.Sscanf(body, "ledger v1 count=%d len=%d crc=%x", &x.Count, &x.Len, &x.CRC); err != nil {
		return Index{}, fmt.Errorf("index %q: %w", body, err)
	}
	return x, nil
}

// AppendRecord appends a record's line to b. The padding (its length derived from the id,
// 16 to 271 bytes) makes records straddle page boundaries.
func AppendRecord(b []byte, r Record) []byte {
	pad := int(r.ID*7919%256) + 16 //nolint:gosec // bounded
	b = fmt.Appendf(b, "r id=%d term=%d writer=%s at=%d pad=", r.ID, r.Term, r.Writer, r.At.UnixNano())
	for i := 0; i < pad; i++ {
		b = append(b, byte('a'+(int(r.ID)+i)%26)) //nolint:gosec // a letter
	}
	return append(b, '\n')
}

// ErrInconsistent marks a pair of files no crash of the writer's disk can leave.
var ErrInconsistent = errors.New("ledger inconsistent")

// Verify checks a log against its index and returns the committed records. The bytes of the
// log past the index are an uncommitted tail (a crash between the two writes) and ignored.
func Verify(log, idx []byte) ([]Record, Index, error) {
	var recs []Record
	x, err := Check(bytes.NewReader(log), int64(len(log)), idx, func(r Record) { recs = append(recs, r) })
	return recs, x, err
}

// Check is Verify reading the log as a stream, holding one record at a time (the app checks
// its files at every start, within its memory limit); each, if not nil, gets every
// committed record in order.
func Check(log io.Reader, logSize int64, idx []byte, each func(Record)) (Index, error) {
	x, err := DecodeIndex(idx)
	if err != nil {
		return x, fmt.Errorf("%w: %w", ErrInconsistent, err)
	}
	if x.Len > logSize {
		return x, fmt.Errorf("%w: the index commits %d bytes of a %d-byte log", ErrInconsistent, x.Len, logSize)
	}
	r := bufio.NewReaderSize(io.LimitReader(log, x.Len), 64<<10)
	var crc uint32
	var n uint64
	for {
		line, err := r.ReadSlice('\n')
		crc = Update(crc, line)
		if errors.Is(err, io.EOF) {
			if len(line) > 0 {
				return x, fmt.Errorf("%w: the committed log ends inside a record", ErrInconsistent)
			}
			break
		}
		if err != nil {
			return x, fmt.Errorf("%w: reading the log: %w", ErrInconsistent, err)
		}
		rec, err := parseRecord(string(line[:len(line)-1]))
		if err != nil {
			return x, fmt.Errorf("%w: record %d: %w", ErrInconsistent, n+1, err)
		}
		if rec.ID != n+1 {
			return x, fmt.Errorf("%w: record %d has id %d", ErrInconsistent, n+1, rec.ID)
		}
		n++
		if each != nil {
			each(rec)
		}
	}
	if crc != x.CRC {
		return x, fmt.Errorf("%w: the log's first %d bytes have CRC %08x, the index says %08x", ErrInconsistent, x.Len, crc, x.CRC)
	}
	if n != x.Count {
		return x, fmt.Errorf("%w: the index counts %d records, the log holds %d", ErrInconsistent, x.Count, n)
	}
	return x, nil
}

func parseRecord(line string) (Record, error) {
	var r Record
	var at int64
	f := strings.Fields(line)
	if len(f) != 6 || f[0] != "r" {
		return r, fmt.Errorf("malformed %.60q", line)
	}
	for _, kv := range f[1:5] {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "id":
			r.ID, err = strconv.ParseUint(v, 10, 64)
		case "term":
			r.Term, err = strconv.ParseUint(v, 10, 64)
		case "writer":
			r.Writer = v
		case "at":
			at, err = strconv.ParseInt(v, 10, 64)
		default:
			err = fmt.Errorf("unknown field %q", k)
		}
		if err != nil {
			return r, fmt.Errorf("field %s: %w", k, err)
		}
	}
	r.At = time.Unix(0, at)
	want := string(AppendRecord(nil, Record{ID: r.ID, Term: r.Term, Writer: r.Writer, At: r.At}))
	if want != line+"\n" {
		return r, fmt.Errorf("record %d's padding is damaged", r.ID)
	}
	return r, nil
}
