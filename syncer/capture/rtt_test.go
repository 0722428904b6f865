package capture

import (
	"os"
	"os/exec"
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
		t0 = time.Now()
		out, err := exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(d, "y"), "bs=1", "count=20000", "conv=notrunc").CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Logf("%s: %v per 1-byte write by dd (another process)", d, time.Since(t0)/time.Duration(n))
	}
}
