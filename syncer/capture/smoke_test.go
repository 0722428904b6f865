package capture

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSmoke(t *testing.T) {
	b, m := t.TempDir(), t.TempDir()
	var j MemJournal
	s, err := Mount(b, m, &j, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unmount()
	if err := os.WriteFile(filepath.Join(m, "a"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(m, "a"), filepath.Join(m, "b")); err != nil {
		t.Fatal(err)
	}
	for _, op := range j.Ops() {
		t.Log(op)
	}
}
