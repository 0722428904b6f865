package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/ledger"
)

// ReadLedger reads the ledger app's two files in dir and verifies them against each other. The
// index is read before the log: the app makes a record durable in the log before the index names
// it, so a live ledger read in that order is consistent too. A read that finds them inconsistent
// is taken again (three tries) before its verdict counts. A dir without a ledger holds no rows.
func ReadLedger(dir string) (*SQLiteState, error) {
	var st *SQLiteState
	var err error
	for try := 0; try < 3; try++ {
		st, err = readLedgerOnce(dir)
		if err == nil && st.Integrity == "ok" {
			return st, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return st, err
}

func readLedgerOnce(dir string) (*SQLiteState, error) {
	idx, err := os.ReadFile(filepath.Join(dir, ledger.IndexFile)) //nolint:gosec // test files
	if errors.Is(err, fs.ErrNotExist) {
		return &SQLiteState{Integrity: "ok"}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	log, err := os.ReadFile(filepath.Join(dir, ledger.LogFile)) //nolint:gosec // test files
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	recs, _, verr := ledger.Verify(log, idx)
	st := &SQLiteState{Integrity: "ok"}
	if verr != nil {
		st.Integrity = verr.Error()
	}
	for _, r := range recs {
		st.Rows = append(st.Rows, Write{
			Term: r.Term, ID: r.Writer, Seq: r.ID, At: r.At,
			Line: fmt.Sprintf("w term=%d id=%s seq=%d t=%d", r.Term, r.Writer, r.ID, r.At.UnixNano()),
		})
	}
	return st, nil
}

// lostFoundLedger returns the records kept in the ledgers under a data dir's lost+found.
func lostFoundLedger(dataDir string) lineSet {
	s := lineSet{}
	_ = filepath.WalkDir(filepath.Join(dataDir, "lost+found"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil //nolint:nilerr // best effort: a missing dir is empty
		}
		st, rerr := readLedgerOnce(p)
		if rerr != nil || st == nil {
			return nil //nolint:nilerr // no readable ledger in this folder
		}
		for _, w := range st.Rows {
			s[w.Key()] = true
		}
		return nil
	})
	return s
}
