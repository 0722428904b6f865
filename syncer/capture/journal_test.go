package capture

import (
	"bytes"
	"testing"
)

// TestMemJournalSlabs: data copied into shared slabs stays each op's own
// (no op's data overlaps another's, appending never changes an earlier
// op), across slab boundaries, ops larger than a slab, and Resets that
// recycle the slabs.
func TestMemJournalSlabs(t *testing.T) {
	j := &MemJournal{}
	sizes := []int{1, 4096, 1 << 20, 3 << 20, 1<<20 + 7, slabSize + 1, 0, 512}
	var want [][]byte
	seq := uint64(0)
	for round := range 3 {
		want = want[:0]
		for i, n := range sizes {
			d := bytes.Repeat([]byte{byte(round*16 + i + 1)}, n)
			if got := j.Append(Op{Kind: OpWrite, Data: d}); got != seq+1 {
				t.Fatalf("sequence %d, want %d", got, seq+1)
			}
			seq++
			clear(d) // the caller's buffer is reused at once: the journal must have copied
			want = append(want, bytes.Repeat([]byte{byte(round*16 + i + 1)}, n))
		}
		ops := j.Ops()
		if len(ops) != len(want) {
			t.Fatalf("round %d: %d ops, want %d", round, len(ops), len(want))
		}
		for i, op := range ops {
			if !bytes.Equal(op.Data, want[i]) {
				t.Fatalf("round %d: op %d data changed (len %d, want %d)", round, i, len(op.Data), len(want[i]))
			}
			if cap(op.Data) != len(op.Data) {
				t.Fatalf("round %d: op %d data has room to grow into its neighbour", round, i)
			}
		}
		j.Reset()
		if j.Len() != seq {
			t.Fatalf("Len after Reset = %d, want %d", j.Len(), seq)
		}
	}
}
