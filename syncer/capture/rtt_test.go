package capture

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	if os.Getenv("CAPTURE_TRACE") == "" {
		t.Skip("CAPTURE_TRACE unset")
	}
	_, mnt, _ := mountT(t, Options{})
	plain := t.TempDir()
	for _, d := range []string{plain, mnt, plain, mnt} {
		f, err := os.OpenFile(filepath.Join(d, "x"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		b := []byte("x")
		n := 20000
		t0 := time.Now()
		for i := range n {
			f.WriteAt(b, int64(i%4096))
		}
		el := time.Since(t0)
		f.Close()
		t.Logf("%s: %v per 1-byte pwrite", d, el/time.Duration(n))
	}
}
