package wire

import (
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
