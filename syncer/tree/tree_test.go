package tree

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

func TestValidName(t *testing.T) {
	// Whatever Linux allows in a name is replicated.
	for _, ok := range []string{"a", "a/b", "a b/c.d", ".hidden", "x..y", "a\\b", "caf\xe9", "new\nline", "..."} {
		if err := ValidName(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/etc/passwd", "..", "../x", "a/../../x", "a/./b", "a//b", "a/", ".", "a\x00b", strings.Repeat("x", 256), strings.Repeat("d/", 2049) + "x"} {
		if err := ValidName(bad); !errors.Is(err, ErrBadName) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestManifestRoundTripAndValidation(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "d/e"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "d/f"), make([]byte, 3*BlockSize+1), 0o640))
	must(t, os.Symlink("/etc", filepath.Join(dir, "link")))
	must(t, os.MkdirAll(filepath.Join(dir, StateDir), 0o755))
	root, err := os.OpenRoot(dir)
	must(t, err)
	defer root.Close()
	m, err := Scan(context.Background(), root, ScanOptions{})
	must(t, err)
	if len(m) != 4 || m["d/f"].Size != 3*BlockSize+1 || len(m["d/f"].Hashes) != 4 || m["link"].Target != "/etc" {
		t.Fatalf("scan: %+v", m)
	}
	var chunks [][]byte
	must(t, EncodeManifest(Sorted(m), 16, func(b []byte) error { chunks = append(chunks, b); return nil }))
	var dec ManifestDecoder
	for _, c := range chunks {
		must(t, dec.Add(c))
	}
	if len(dec.Entries) != 4 || !SameContent(dec.Entries["d/f"], m["d/f"]) {
		t.Fatalf("decoded %+v", dec.Entries)
	}
	for _, bad := range []string{"../escape", "/abs", StateDir + "/x", "nodir/x"} {
		e := wire.Enc{}
		AppendEntry(&e, &Entry{Path: bad, Type: TypeDir})
		var d ManifestDecoder
		if err := d.Add(e.B); err == nil {
			t.Errorf("manifest entry %q accepted", bad)
		}
	}
}

func TestApplierConfined(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	must(t, os.Symlink(outside, filepath.Join(dir, "esc")))
	root, err := os.OpenRoot(dir)
	must(t, err)
	defer root.Close()
	a := &Applier{Root: root}
	must(t, a.Prepare())
	w, err := a.BeginFile(wire.FileBegin{Path: "esc/pwned", Size: 1, Mode: 0o644, Whole: true}, false)
	must(t, err)
	if err := w.Commit(); err == nil {
		t.Fatal("write through an escaping symlink succeeded")
	}
	if err := a.Mkdir(wire.Meta{Path: "esc/d", Mode: 0o755}); err == nil {
		t.Fatal("mkdir through an escaping symlink succeeded")
	}
	ents, _ := os.ReadDir(outside)
	if len(ents) != 0 {
		t.Fatalf("escaped: %v", ents)
	}
}

// bulkApplier is a prepared Applier for bulk writes into dir.
func bulkApplier(t *testing.T, dir string) *Applier {
	t.Helper()
	root, err := os.OpenRoot(dir)
	must(t, err)
	t.Cleanup(func() { root.Close() })
	a := &Applier{Root: root, Bulk: true}
	must(t, a.Prepare())
	return a
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestInitialSyncWriteIsAtomic: a file of an initial sync is written under
// a temporary name next to its final one and appears, complete and with
// its metadata, only on Commit; Abort leaves nothing behind.
func TestInitialSyncWriteIsAtomic(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "d"), 0o755))
	a := bulkApplier(t, dir)
	stop := a.StartWriteback()
	defer stop()

	data := make([]byte, 3*BlockSize+10)
	for i := range data {
		data[i] = byte(i)
	}
	var hashes []uint64
	for o := 0; o < len(data); o += BlockSize {
		hashes = append(hashes, xxh3.Hash(data[o:min(o+BlockSize, len(data))]))
	}
	const mtime = int64(1_600_000_000_123_456_789)
	b := wire.FileBegin{Path: "d/f", Size: int64(len(data)), Mode: 0o640, MtimeNs: mtime, Whole: true}
	w, err := a.BeginFile(b, true)
	must(t, err)
	must(t, w.Write(wire.FileData{Offset: 0, Hashes: hashes, Data: data}))
	if _, err := os.Lstat(filepath.Join(dir, "d/f")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("file visible before Commit: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "d")); len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), tmpPrefix) {
		t.Fatalf("want one temporary file next to the final name, got %v", ents)
	}
	must(t, w.Commit())
	got, err := os.ReadFile(filepath.Join(dir, "d/f"))
	must(t, err)
	fi, err := os.Stat(filepath.Join(dir, "d/f"))
	must(t, err)
	if !bytes.Equal(got, data) || fi.Mode().Perm() != 0o640 || fi.ModTime().UnixNano() != mtime {
		t.Fatalf("committed file: %d bytes, mode %v, mtime %v", len(got), fi.Mode(), fi.ModTime().UnixNano())
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "d")); len(ents) != 1 {
		t.Fatalf("leftovers after Commit: %v", ents)
	}

	// A corrupt block is refused and nothing is written under the name.
	w, err = a.BeginFile(wire.FileBegin{Path: "d/g", Size: int64(len(data)), Mode: 0o644, Whole: true}, true)
	must(t, err)
	bad := append([]uint64(nil), hashes...)
	bad[1]++
	if err := w.Write(wire.FileData{Offset: 0, Hashes: bad, Data: data}); !errors.Is(err, ErrBadBlock) {
		t.Fatalf("corrupt block: %v", err)
	}
	w.Abort()
	if ents, _ := os.ReadDir(filepath.Join(dir, "d")); len(ents) != 1 {
		t.Fatalf("leftovers after Abort: %v", ents)
	}
	stop()
	must(t, a.Sync())
}

// TestCreatedModes: whatever the umask lets through or not, a committed
// file has exactly the master's mode.
func TestCreatedModes(t *testing.T) {
	dir := t.TempDir()
	a := bulkApplier(t, dir)
	for i, mode := range []fs.FileMode{0o644, 0o666, 0o600, 0o000, 0o755 | fs.ModeSetgid, 0o700 | fs.ModeSetuid} {
		for _, initial := range []bool{false, true} {
			name := fmt.Sprintf("f%d-%v", i, initial)
			w, err := a.BeginFile(wire.FileBegin{Path: name, Size: 1, Mode: uint32(mode), Whole: true}, initial)
			must(t, err)
			must(t, w.Write(wire.FileData{Hashes: []uint64{xxh3.Hash([]byte{7})}, Data: []byte{7}}))
			must(t, w.Commit())
			fi, err := os.Lstat(filepath.Join(dir, name))
			must(t, err)
			if got := fi.Mode() & ModeMask; got != mode {
				t.Errorf("%s: mode %v, want %v", name, got, mode)
			}
		}
	}
}
