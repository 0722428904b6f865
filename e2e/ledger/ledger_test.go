package ledger

import (
	"errors"
	"testing"
	"time"
)

// history commits n records and returns, after every write the app makes, the two files as
// its disk holds them then.
func history(n int) (logs, idxs [][]byte) {
	var log, idx []byte
	var x Index
	for i := 1; i <= n; i++ {
		log = AppendRecord(log, Record{ID: uint64(i), Term: 3, Writer: "w1", At: time.Unix(0, int64(i))})
		logs, idxs = append(logs, append([]byte(nil), log...)), append(idxs, idx)
		x = Index{Count: uint64(i), Len: int64(len(log)), CRC: Update(0, log)}
		idx = x.Encode()
		logs, idxs = append(logs, append([]byte(nil), log...)), append(idxs, idx)
	}
	return logs, idxs
}

func TestEveryStateOfTheHistoryVerifies(t *testing.T) {
	logs, idxs := history(50)
	for i := range logs {
		recs, x, err := Verify(logs[i], idxs[i])
		if err != nil {
			t.Fatalf("state %d: %v", i, err)
		}
		if want := uint64((i + 1) / 2); x.Count != want || uint64(len(recs)) != want {
			t.Fatalf("state %d: %d records, index %d, want %d", i, len(recs), x.Count, want)
		}
		// a torn append (part of the next record) is an uncommitted tail, not damage
		if _, _, err := Verify(append(logs[i], "r id=99 te"...), idxs[i]); err != nil {
			t.Fatalf("state %d with a torn tail: %v", i, err)
		}
	}
}

// TestMixedStatesAreCaught is the watcher's failure: the index of a later moment next to an
// earlier log, or a log whose committed bytes changed.
func TestMixedStatesAreCaught(t *testing.T) {
	logs, idxs := history(20)
	for i := range logs {
		for j := i + 1; j < len(logs); j++ {
			if x, _ := DecodeIndex(idxs[j]); x.Len <= int64(len(logs[i])) {
				continue // the index of j commits no more than log i holds: a real state
			}
			if _, _, err := Verify(logs[i], idxs[j]); !errors.Is(err, ErrInconsistent) {
				t.Fatalf("log of state %d with the index of state %d: %v, want inconsistent", i, j, err)
			}
		}
	}
	last := len(logs) - 1
	bad := append([]byte(nil), logs[last]...)
	bad[10] ^= 1
	if _, _, err := Verify(bad, idxs[last]); !errors.Is(err, ErrInconsistent) {
		t.Fatalf("a flipped byte: %v", err)
	}
	if _, _, err := Verify(logs[last], idxs[last][:64]); !errors.Is(err, ErrInconsistent) {
		t.Fatalf("a short index: %v", err)
	}
}
