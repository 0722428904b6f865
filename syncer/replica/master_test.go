package replica

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// TestReadBlocksStopsAtSentSize: a file that grows between the stat that
// sized its FileBegin and the reads sends no byte past that size (clones
// refuse such data as malformed); one that shrinks sends what is left.
func TestReadBlocksStopsAtSentSize(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	data := bytes.Repeat([]byte("0123456789abcdef"), (3*dataChunk+5000)/16)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		name string
		size int64 // as sent in FileBegin
		want int   // bytes read
	}{
		{"grew after stat", int64(len(data)) - 3000, len(data) - 3000},
		{"grew by less than a block", int64(len(data)) - 10, len(data) - 10},
		{"unchanged", int64(len(data)), len(data)},
		{"shrank after stat", int64(len(data)) + 2*tree.BlockSize, len(data)},
	} {
		all := []wire.Range{{Start: 0, Count: uint64(tree.Blocks(c.size))}}
		var got []byte
		var lastEnd int64
		err := readBlocks(f, "f", all, c.size, make([]byte, dataChunk), func(off int64, b []byte) error {
			if off != lastEnd || off%tree.BlockSize != 0 {
				t.Fatalf("%s: data at %d after %d", c.name, off, lastEnd)
			}
			lastEnd = off + int64(len(b))
			got = append(got, b...)
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(got) != c.want || !bytes.Equal(got, data[:c.want]) {
			t.Errorf("%s: read %d bytes, want %d", c.name, len(got), c.want)
		}
	}
}
