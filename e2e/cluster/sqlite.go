package cluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the same pure-Go SQLite the test app writes with
)

// The apps the cluster can run as its workload.
const (
	// AppWriter appends term-stamped lines to writes.log (the default).
	AppWriter = "writer"
	// AppSQLite commits one SQLite transaction after another into app.db (WAL,
	// synchronous=FULL): an app whose files depend on each other, not tuned for Bedrock.
	AppSQLite = "sqlite"
	// AppLedger commits records to a log and an index rewritten in place (e2e/ledger): our own
	// app with two dependent files, where any state its disk could not have held shows.
	AppLedger = "ledger"
)

// dataWrites reads the writes an allocation's data dir holds: the writer's lines, or the
// committed rows of the SQLite database.
func (c *Cluster) dataWrites(ctx context.Context, a *Alloc) ([]Write, error) {
	if c.Opts.App == AppSQLite || c.Opts.App == AppLedger {
		st, err := c.readState(ctx, a.DataFile(""))
		if err != nil {
			return nil, err
		}
		return st.Rows, nil
	}
	return ReadWrites(a.DataFile("writes.log"))
}

// readState reads the transactional apps' data: SQLite's database or the ledger.
func (c *Cluster) readState(ctx context.Context, dir string) (*SQLiteState, error) {
	if c.Opts.App == AppLedger {
		return ReadLedger(dir)
	}
	return ReadSQLite(ctx, dir)
}

func must(ws []Write, _ error) []Write { return ws }

// appExtraArgs are the workload's own arguments (HCL list items, each with a leading comma):
// the writer serves its last write over HTTP on addr.
func (c *Cluster) appExtraArgs(addr string) string {
	if c.Opts.App == AppSQLite && c.Opts.WALAutocheckpoint > 0 {
		return fmt.Sprintf(", \"-wal-autocheckpoint\", \"%d\"", c.Opts.WALAutocheckpoint)
	}
	if c.Opts.App == AppSQLite || c.Opts.App == AppLedger {
		return ""
	}
	return fmt.Sprintf(", \"-addr\", %q", addr)
}

// lostFound returns the writes kept under an allocation's lost+found.
func (c *Cluster) lostFound(ctx context.Context, a *Alloc) lineSet {
	switch c.Opts.App {
	case AppSQLite:
		return lostFoundSQLite(ctx, a.DataFile(""))
	case AppLedger:
		return lostFoundLedger(a.DataFile(""))
	}
	return lostFoundWrites(a.DataFile(""))
}

// SQLiteState is what a data dir's copy of the test app's database (or ledger) holds.
type SQLiteState struct {
	// Rows are the committed transactions, as writes keyed like the app's witness lines.
	Rows []Write
	// Integrity is PRAGMA integrity_check's verdict ("ok" when sound).
	Integrity string
	// Gaps lists the ids missing below the highest one (the app commits ids 1, 2, 3, ...).
	Gaps []int64
}

// ReadSQLite opens a copy of the database (app.db and its WAL) found in dir, as SQLite would
// after a power cut there: a live file is never opened in place, so the app and the syncer are
// not disturbed. A copy that caught a file mid-change is taken again (three tries) before its
// verdict counts. A dir without a database holds no rows.
func ReadSQLite(ctx context.Context, dir string) (*SQLiteState, error) {
	var last *SQLiteState
	var lastErr error
	for try := 0; try < 3; try++ {
		st, err := readSQLiteOnce(ctx, dir)
		if err == nil && st.Integrity == "ok" {
			return st, nil
		}
		last, lastErr = st, err
		time.Sleep(50 * time.Millisecond)
	}
	return last, lastErr
}

func readSQLiteOnce(ctx context.Context, dir string) (*SQLiteState, error) {
	if _, err := os.Stat(filepath.Join(dir, "app.db")); errors.Is(err, fs.ErrNotExist) {
		return &SQLiteState{Integrity: "ok"}, nil
	}
	tmp, err := os.MkdirTemp("", "bedrock-sqlite-")
	if err != nil {
		return nil, fmt.Errorf("sqlite copy: %w", err)
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	for _, name := range []string{"app.db", "app.db-wal"} {
		if err := copyIfExists(filepath.Join(dir, name), filepath.Join(tmp, name)); err != nil {
			return nil, err
		}
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(tmp, "app.db")+"?_pragma=busy_timeout(2000)")
	if err != nil {
		return nil, fmt.Errorf("sqlite open: %w", err)
	}
	defer func() { _ = db.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st := &SQLiteState{}
	rows, err := db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return nil, fmt.Errorf("integrity_check: %w", err)
	}
	var verdicts []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err == nil {
			verdicts = append(verdicts, v)
		}
	}
	_ = rows.Close()
	st.Integrity = strings.Join(verdicts, "; ")
	rows, err = db.QueryContext(ctx, `SELECT id, term, writer, at FROM tx ORDER BY id`)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return st, nil
		}
		return st, fmt.Errorf("reading rows: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var want int64 = 1
	for rows.Next() {
		var id int64
		var at int64
		var w Write
		if err := rows.Scan(&id, &w.Term, &w.ID, &at); err != nil {
			return st, fmt.Errorf("reading rows: %w", err)
		}
		for ; want < id; want++ {
			st.Gaps = append(st.Gaps, want)
		}
		want = id + 1
		w.Seq, w.At = uint64(id), time.Unix(0, at) //nolint:gosec // ids are positive
		w.Line = fmt.Sprintf("w term=%d id=%s seq=%d t=%d", w.Term, w.ID, id, at)
		st.Rows = append(st.Rows, w)
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("reading rows: %w", err)
	}
	return st, nil
}

func copyIfExists(src, dst string) error {
	in, err := os.Open(src) //nolint:gosec // test files
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sqlite copy: %w", err)
	}
	defer func() { _ = in.Close() }()
	out, err := os.Create(dst) //nolint:gosec // a temp dir of ours
	if err != nil {
		return fmt.Errorf("sqlite copy: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return fmt.Errorf("sqlite copy: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("sqlite copy: %w", err)
	}
	return nil
}

// lostFoundSQLite returns the rows kept in the databases under a data dir's lost+found.
func lostFoundSQLite(ctx context.Context, dataDir string) lineSet {
	s := lineSet{}
	_ = filepath.WalkDir(filepath.Join(dataDir, "lost+found"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil //nolint:nilerr // best effort: a missing dir is empty
		}
		if _, serr := os.Stat(filepath.Join(p, "app.db")); serr != nil {
			return nil //nolint:nilerr // no database in this folder
		}
		if st, rerr := ReadSQLite(ctx, p); rerr == nil && st != nil {
			for _, w := range st.Rows {
				s[w.Key()] = true
			}
		}
		return nil
	})
	return s
}
