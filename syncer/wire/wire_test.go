package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	fd := FileData{Offset: 8192, Hashes: []uint64{1, 2}, Data: bytes.Repeat([]byte{7}, 5000)}
	var buf bytes.Buffer
	if err := WriteFrame(&buf, Frame{Type: TFileData, Term: 3, Seq: 9, Payload: fd.Marshal()}); err != nil {
		t.Fatal(err)
	}
	f, _, err := ReadFrame(&buf, MaxPayload, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != TFileData || f.Term != 3 || f.Seq != 9 {
		t.Fatalf("header %+v", f)
	}
	var got FileData
	if err := got.Unmarshal(f.Payload); err != nil {
		t.Fatal(err)
	}
	if got.Offset != fd.Offset || len(got.Hashes) != 2 || !bytes.Equal(got.Data, fd.Data) {
		t.Fatalf("payload mismatch")
	}
}

func TestWriteFrameParts(t *testing.T) {
	fd := FileData{Offset: 4096, Hashes: []uint64{5}, Data: []byte("abc")}
	var a, b bytes.Buffer
	must(t, WriteFrame(&a, Frame{Type: TFileData, Term: 1, Seq: 2, Payload: fd.Marshal()}))
	must(t, WriteFrameParts(&b, TFileData, 1, 2, fd.AppendHeader(nil), fd.Data))
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("WriteFrameParts differs from WriteFrame")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestCorruptionDetected(t *testing.T) {
	b := AppendFrame(nil, Frame{Type: TDelete, Term: 1, Seq: 2, Payload: (&PathMsg{Path: "a/b"}).Marshal()})
	for i := 4; i < len(b); i++ {
		c := append([]byte(nil), b...)
		c[i] ^= 0x40
		_, _, err := ReadFrame(bytes.NewReader(c), MaxPayload, nil)
		if err == nil {
			t.Fatalf("flip at byte %d not detected", i)
		}
	}
}

func TestSizeBound(t *testing.T) {
	b := AppendFrame(nil, Frame{Type: TError, Payload: make([]byte, 5000)})
	_, _, err := ReadFrame(bytes.NewReader(b), MaxAuthPayload, nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	// A forged huge length must fail before allocation.
	h := []byte{0xff, 0xff, 0xff, 0xff, byte(TError)}
	h = append(h, make([]byte, 16)...)
	if _, _, err := ReadFrame(bytes.NewReader(h), MaxPayload, nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(b[:10]), MaxPayload, nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("want unexpected EOF, got %v", err)
	}
}

func TestForgedCount(t *testing.T) {
	e := Enc{}
	e.Varint(0)
	e.Uvarint(1 << 40) // claims a trillion hashes
	var fd FileData
	if err := fd.Unmarshal(e.B); !errors.Is(err, ErrMalformed) {
		t.Fatalf("want ErrMalformed, got %v", err)
	}
}

// FuzzDecode feeds arbitrary bytes to the frame decoder and to every message
// decoder: nothing may panic, allocate beyond the input, or accept a frame
// whose checksum does not match.
func FuzzDecode(f *testing.F) {
	seeds := []Frame{
		{Type: THello, Payload: (&Hello{Version: 1, Session: 5}).Marshal()},
		{Type: TAuth, Payload: (&Auth{ClientID: "c1"}).Marshal()},
		{Type: TRequest, Term: 2, Payload: (&Request{Path: "x/y", KnownBlocks: 3, Ranges: []Range{{0, 2}}}).Marshal()},
		{Type: TFileBegin, Term: 2, Seq: 7, Payload: (&FileBegin{Path: "f", Size: 10, Mode: 0o644}).Marshal()},
		{Type: TFileData, Payload: (&FileData{Offset: 0, Hashes: []uint64{9}, Data: []byte("hello")}).Marshal()},
		{Type: TSymlink, Payload: (&Symlink{Path: "l", Target: "../t"}).Marshal()},
		{Type: TRename, Payload: (&Rename{From: "a", To: "b"}).Marshal()},
		{Type: TAck, Term: 1, Seq: 1},
	}
	for _, s := range seeds {
		f.Add(AppendFrame(nil, s))
	}
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := Decode(b, 1<<16)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("used %d of %d bytes", n, len(b))
		}
		// Re-encoding a decoded frame gives the same bytes.
		if again := AppendFrame(nil, fr); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
		if m := MessageFor(fr.Type); m != nil {
			_ = m.Unmarshal(fr.Payload)
		}
		// Message decoders must also survive raw garbage payloads.
		for ty := THello; ty < tMax; ty++ {
			if m := MessageFor(ty); m != nil {
				_ = m.Unmarshal(b)
			}
		}
	})
}

// dataStream encodes a mix of frames: FileData of several sizes between
// other frames.
func dataStream(t testing.TB) ([]byte, []Frame) {
	var out []byte
	var frames []Frame
	add := func(f Frame) {
		out = AppendFrame(out, f)
		frames = append(frames, f)
	}
	for i, n := range []int{0, 1, 4095, 4096, 40000, 256 << 10, 256<<10 + 100} {
		data := bytes.Repeat([]byte{byte(i + 1)}, n)
		hashes := make([]uint64, (n+4095)/4096)
		for j := range hashes {
			hashes[j] = uint64(i*1000 + j)
		}
		add(Frame{Type: TFileBegin, Term: 2, Seq: uint64(i), Payload: (&FileBegin{Path: "f", Size: int64(n)}).Marshal()})
		add(Frame{Type: TFileData, Term: 2, Seq: uint64(i), Payload: (&FileData{Offset: int64(i) * 4096, Hashes: hashes, Data: data}).Marshal()})
		add(Frame{Type: TFileEnd, Term: 2, Seq: uint64(i)})
	}
	return out, frames
}

// TestReadDataFrame: ReadDataFrame returns what ReadFrame and
// FileData.Unmarshal would, whatever the buffering.
func TestReadDataFrame(t *testing.T) {
	stream, frames := dataStream(t)
	checkDataFrames(t, stream, frames, func() dataReader { return ReadDataFrame })
}

// dataReader is ReadDataFrame or an Opener's.
type dataReader func(r *bufio.Reader, raw io.Reader, limit int, buf []byte, get func(int) []byte) (Frame, FileData, []byte, error)

// checkDataFrames reads stream back, at several buffer sizes, with a reader from newReader
// (one per pass: an Opener counts frames), and checks that it holds frames — FileData decoded,
// not left in the payload — and nothing after them.
func checkDataFrames(t *testing.T, stream []byte, frames []Frame, newReader func() dataReader) {
	t.Helper()
	get := func(n int) []byte { return make([]byte, n) }
	for _, size := range []int{16, 4096, 1 << 20} {
		read := newReader()
		r := bufio.NewReaderSize(bytes.NewReader(stream), size)
		for i, want := range frames {
			f, fd, _, err := read(r, r, MaxPayload, nil, get)
			if err != nil {
				t.Fatalf("buffer %d, frame %d: %v", size, i, err)
			}
			if f.Type != want.Type || f.Term != want.Term || f.Seq != want.Seq {
				t.Fatalf("buffer %d, frame %d: header %+v, want %+v", size, i, f, want)
			}
			if f.Type != TFileData {
				if !bytes.Equal(f.Payload, want.Payload) {
					t.Fatalf("buffer %d, frame %d: payload differs", size, i)
				}
				continue
			}
			if f.Payload != nil {
				t.Fatalf("buffer %d, frame %d: FileData not decoded", size, i)
			}
			var wd FileData
			must(t, wd.Unmarshal(want.Payload))
			if fd.Offset != wd.Offset || !bytes.Equal(fd.Data, wd.Data) || len(fd.Hashes) != len(wd.Hashes) {
				t.Fatalf("buffer %d, frame %d: data differs", size, i)
			}
			for j := range fd.Hashes {
				if fd.Hashes[j] != wd.Hashes[j] {
					t.Fatalf("buffer %d, frame %d: hash %d differs", size, i, j)
				}
			}
		}
		if _, _, _, err := read(r, r, MaxPayload, nil, get); !errors.Is(err, io.EOF) {
			t.Fatalf("after the last frame: %v", err)
		}
	}
}

// TestReadDataFrameCorruption: a flipped bit anywhere in a FileData frame
// is an error, never data.
func TestReadDataFrameCorruption(t *testing.T) {
	fd := FileData{Offset: 4096, Hashes: []uint64{1, 2}, Data: bytes.Repeat([]byte{9}, 5000)}
	b := AppendFrame(nil, Frame{Type: TFileData, Term: 1, Seq: 2, Payload: fd.Marshal()})
	for i := 0; i < len(b); i++ {
		for _, size := range []int{16, 1 << 16} {
			c := append([]byte(nil), b...)
			c[i] ^= 0x40
			r := bufio.NewReaderSize(bytes.NewReader(c), size)
			f, _, _, err := ReadDataFrame(r, r, MaxPayload, nil, func(n int) []byte { return make([]byte, n) })
			if err == nil && f.Type == TFileData {
				t.Fatalf("flip at byte %d (buffer %d) not detected", i, size)
			}
		}
	}
}

// FuzzReadDataFrame: on any input, ReadDataFrame agrees with ReadFrame
// followed by FileData.Unmarshal.
func FuzzReadDataFrame(f *testing.F) {
	stream, _ := dataStream(f)
	f.Add(stream[:min(len(stream), 70000)])
	f.Add(AppendFrame(nil, Frame{Type: TFileData, Payload: (&FileData{Hashes: []uint64{9}, Data: []byte("x")}).Marshal()}))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, size := range []int{16, 4096} {
			r := bufio.NewReaderSize(bytes.NewReader(b), size)
			f1, d1, _, err1 := ReadDataFrame(r, r, 1<<16, nil, func(n int) []byte { return make([]byte, n) })
			f2, _, err2 := ReadFrame(bytes.NewReader(b), 1<<16, nil)
			var d2 FileData
			if err2 == nil && f2.Type == TFileData {
				err2 = d2.Unmarshal(f2.Payload)
			}
			if (err1 == nil) != (err2 == nil) {
				t.Fatalf("buffer %d: ReadDataFrame error %v, ReadFrame error %v", size, err1, err2)
			}
			if err1 != nil {
				continue
			}
			if f1.Type != f2.Type || f1.Term != f2.Term || f1.Seq != f2.Seq {
				t.Fatalf("buffer %d: headers differ", size)
			}
			if f1.Type == TFileData && (d1.Offset != d2.Offset || !bytes.Equal(d1.Data, d2.Data) || len(d1.Hashes) != len(d2.Hashes)) {
				t.Fatalf("buffer %d: FileData differs", size)
			}
		}
	})
}
