package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

func testKeys(t testing.TB) Keys {
	t.Helper()
	k, err := DeriveKeys([]byte("0123456789abcdef-secret"), Transcript{Version: Version, Session: 5, ClientID: "c1", ServerTerm: 2})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sealedStream seals frames as the server would.
func sealedStream(t testing.TB, k Keys, frames []Frame) []byte {
	t.Helper()
	seal, _, err := k.Server()
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, f := range frames {
		if out, err = seal.Append(out, f); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func clientOpener(t testing.TB, k Keys) *Opener {
	t.Helper()
	_, open, err := k.Client()
	if err != nil {
		t.Fatal(err)
	}
	return open
}

// TestDeriveKeys: both MACs and both directions differ, and any change of
// the secret or of a transcript field changes everything.
func TestDeriveKeys(t *testing.T) {
	base := Transcript{Version: Version, Session: 5, ClientID: "c1", ServerTerm: 2, ClientSeq: 9}
	k, err := DeriveKeys([]byte("0123456789abcdef-secret"), base)
	must(t, err)
	if k.ClientMAC == k.ServerMAC || bytes.Equal(k.toServer, k.toClient) {
		t.Fatal("directions share a value")
	}
	variants := []Transcript{base, base, base, base, base, base}
	variants[0].Session++
	variants[1].ServerNonce[3] ^= 1
	variants[2].ClientNonce[0] ^= 1
	variants[3].ClientTerm++
	variants[4].ClientID = "c2"
	variants[5].ServerSeq++
	for i, v := range variants {
		o, err := DeriveKeys([]byte("0123456789abcdef-secret"), v)
		must(t, err)
		if o.ClientMAC == k.ClientMAC || o.ServerMAC == k.ServerMAC || bytes.Equal(o.toClient, k.toClient) {
			t.Fatalf("variant %d derives the same values", i)
		}
	}
	o, err := DeriveKeys([]byte("0123456789abcdef-other!"), base)
	must(t, err)
	if o.ClientMAC == k.ClientMAC {
		t.Fatal("another secret derives the same MAC")
	}
}

func TestSealedRoundTrip(t *testing.T) {
	k := testKeys(t)
	_, frames := dataStream(t)
	sealed := sealedStream(t, k, frames)
	checkDataFrames(t, sealed, frames, func() dataReader { return clientOpener(t, k).ReadDataFrame })
	// ReadFrame and WriteFrameParts agree with Append.
	seal, _, err := k.Server()
	must(t, err)
	var b bytes.Buffer
	for _, f := range frames {
		if f.Type == TFileData {
			var fd FileData
			must(t, fd.Unmarshal(f.Payload))
			must(t, seal.WriteFrameParts(&b, f.Type, f.Term, f.Seq, fd.AppendHeader(nil), fd.Data))
		} else {
			must(t, seal.WriteFrame(&b, f))
		}
	}
	if !bytes.Equal(b.Bytes(), sealed) {
		t.Fatal("WriteFrameParts differs from Append")
	}
	open := clientOpener(t, k)
	for i, want := range frames {
		f, _, err := open.ReadFrame(&b, MaxPayload, nil)
		if err != nil || f.Type != want.Type || !bytes.Equal(f.Payload, want.Payload) {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
}

// splitFrames cuts a sealed stream at frame boundaries.
func splitFrames(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 4 {
		n := HeaderSize + int(uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3])) + TagSize
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// TestSealedTampering: a relay that flips a bit anywhere, injects a frame
// it sealed with another key, a clear frame, replays, reorders or drops a
// frame is caught at that frame; nothing after it is accepted either.
func TestSealedTampering(t *testing.T) {
	k := testKeys(t)
	frames := []Frame{
		{Type: TMkdir, Term: 2, Seq: 1, Payload: (&Meta{Path: "a"}).Marshal()},
		{Type: TDelete, Term: 2, Seq: 2, Payload: (&PathMsg{Path: "b"}).Marshal()},
		{Type: THeartbeat, Term: 2, Seq: 2},
		{Type: TRename, Term: 2, Seq: 3, Payload: (&Rename{From: "a", To: "c"}).Marshal()},
	}
	good := splitFrames(sealedStream(t, k, frames))
	other, err := DeriveKeys([]byte("not-the-secret-0123456"), Transcript{Version: Version, Session: 5, ClientID: "c1", ServerTerm: 2})
	must(t, err)
	forged := splitFrames(sealedStream(t, other, []Frame{{Type: TFileBegin, Term: 2, Seq: 2, Payload: (&FileBegin{Path: "pwned.txt", Size: 5}).Marshal()}}))[0]
	clearFrame := AppendFrame(nil, Frame{Type: TFileBegin, Term: 2, Seq: 2, Payload: (&FileBegin{Path: "pwned.txt", Size: 5}).Marshal()})
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := map[string][]byte{
		"inject sealed with another key": cat(good[0], forged, good[1], good[2], good[3]),
		"inject clear frame":             cat(good[0], clearFrame, good[1], good[2], good[3]),
		"replay":                         cat(good[0], good[1], good[1], good[2], good[3]),
		"reorder":                        cat(good[0], good[2], good[1], good[3]),
		"drop":                           cat(good[0], good[2], good[3]),
		"replay the first at the end":    cat(good[0], good[1], good[2], good[3], good[0]),
	}
	stream := cat(good...)
	for i := 0; i < len(stream); i++ {
		c := append([]byte(nil), stream...)
		c[i] ^= 0x01
		cases["flip byte "+string(rune('0'+i%10))+"@"+itoa(i)] = c
	}
	for name, b := range cases {
		open := clientOpener(t, k)
		r := bufio.NewReader(bytes.NewReader(b))
		accepted := 0
		var err error
		for {
			var f Frame
			f, _, err = open.ReadFrame(r, MaxPayload, nil)
			if err != nil {
				break
			}
			if f.Type != frames[accepted].Type || f.Seq != frames[accepted].Seq {
				t.Fatalf("%s: accepted %s seq %d as frame %d", name, f.Type, f.Seq, accepted)
			}
			accepted++
		}
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s: every frame accepted", name)
		}
		// The opener stays failed.
		if _, _, err2 := open.ReadFrame(bytes.NewReader(stream), MaxPayload, nil); err2 == nil {
			t.Fatalf("%s: the opener accepts frames after a failure", name)
		}
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

// FuzzSealedDecode feeds arbitrary bytes to the sealed decoder: nothing
// may panic or be accepted unless it is exactly a frame sealed with the
// stream's key at the expected position; and an accepted frame's payload
// goes through every message decoder.
func FuzzSealedDecode(f *testing.F) {
	k := testKeys(f)
	seeds := []Frame{
		{Type: TRequest, Term: 2, Payload: (&Request{Path: "x/y", KnownBlocks: 3, Ranges: []Range{{0, 2}}}).Marshal()},
		{Type: TFileBegin, Term: 2, Seq: 7, Payload: (&FileBegin{Path: "f", Size: 10, Mode: 0o644}).Marshal()},
		{Type: TFileData, Payload: (&FileData{Offset: 0, Hashes: []uint64{9}, Data: []byte("hello")}).Marshal()},
		{Type: TAck, Term: 1, Seq: 1},
	}
	for _, s := range seeds {
		f.Add(sealedStream(f, k, []Frame{s}))
	}
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := append([]byte(nil), b...)
		open := clientOpener(t, k)
		fr, n, err := open.Decode(b, 1<<16)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("used %d of %d bytes", n, len(b))
		}
		// Only the sealer's exact output at position 0 opens.
		seal, _, _ := k.Server()
		again, err := seal.Append(nil, fr)
		if err != nil || !bytes.Equal(again, orig[:n]) {
			t.Fatalf("accepted a frame the sealer did not produce")
		}
		for ty := THello; ty < tMax; ty++ {
			if m := MessageFor(ty); m != nil {
				_ = m.Unmarshal(fr.Payload)
			}
		}
	})
}

// BenchmarkSeal measures sealing and opening a full data frame.
func BenchmarkSealOpen(b *testing.B) {
	k := testKeys(b)
	seal, _, _ := k.Server()
	_, open, _ := k.Client()
	data := bytes.Repeat([]byte{7}, 256<<10)
	hdr := (&FileData{Hashes: make([]uint64, 64), Data: data}).AppendHeader(nil)
	var buf bytes.Buffer
	b.SetBytes(int64(len(data)))
	r := bufio.NewReaderSize(&buf, 1<<20)
	for i := 0; i < b.N; i++ {
		buf.Reset()
		r.Reset(&buf)
		if err := seal.WriteFrameParts(&buf, TFileData, 1, 1, hdr, data); err != nil {
			b.Fatal(err)
		}
		if _, _, _, err := open.ReadDataFrame(r, r, MaxPayload, nil, func(n int) []byte { return make([]byte, n) }); err != nil {
			b.Fatal(err)
		}
	}
}
