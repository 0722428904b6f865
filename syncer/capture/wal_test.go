package capture

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"testing"
)

// The SQLite-like pattern: a database file and its write-ahead log,
// written alternately. A transaction appends frames (page number, page)
// to the WAL and commits with an fsync of the WAL; every few transactions
// a checkpoint copies the pages into the database, fsyncs it, truncates
// the WAL and fsyncs it again. Recovery reads the database and overlays
// the WAL's frames.
const walPage = 4096

func walFrame(page uint32, txn int) []byte {
	b := make([]byte, 8+walPage)
	binary.LittleEndian.PutUint32(b, page)
	binary.LittleEndian.PutUint32(b[4:], uint32(txn))
	copy(b[8:], bytes.Repeat([]byte(fmt.Sprintf("p%d-t%d;", page, txn)), walPage))
	return b
}

// recoverDB returns, per page, the transaction that last wrote it, as an
// app opening db and wal after a power cut would see it.
func recoverDB(s snap) map[uint32]int {
	pages := map[uint32]int{}
	db := []byte(s["db"].content)
	for off := 0; off+walPage <= len(db); off += walPage {
		var page uint32
		var txn int
		if _, err := fmt.Sscanf(string(db[off:off+16]), "p%d-t%d;", &page, &txn); err == nil {
			pages[page] = txn
		}
	}
	wal := []byte(s["db-wal"].content)
	for off := 0; off+8+walPage <= len(wal); off += 8 + walPage {
		pages[binary.LittleEndian.Uint32(wal[off:])] = int(binary.LittleEndian.Uint32(wal[off+4:]))
	}
	return pages
}

func TestSQLiteLikeWAL(t *testing.T) {
	backing, mnt, j := mountT(t, Options{})
	r := newRecorder(t, backing, mnt, j)
	var db, wal *os.File
	r.do("open db", func() (err error) { db, err = os.OpenFile(r.p("db"), os.O_RDWR|os.O_CREATE, 0o644); return err })
	r.do("open wal", func() (err error) { wal, err = os.OpenFile(r.p("db-wal"), os.O_RDWR|os.O_CREATE, 0o644); return err })
	committed := map[uint32]int{} // what every commit so far promised
	var walOff int64
	type promise struct {
		seq   uint64
		pages map[uint32]int
	}
	var promises []promise
	for txn := 1; txn <= 24; txn++ {
		for _, page := range []uint32{uint32(txn % 5), uint32(txn%3 + 5)} {
			fr := walFrame(page, txn)
			off := walOff
			r.do(fmt.Sprintf("txn %d: wal frame page %d", txn, page), func() error { _, err := wal.WriteAt(fr, off); return err })
			walOff += int64(len(fr))
			committed[page] = txn
		}
		r.do(fmt.Sprintf("txn %d: commit (fsync wal)", txn), wal.Sync)
		promises = append(promises, promise{seq: j.Len(), pages: clonePages(committed)})
		if txn%6 == 0 {
			for page, tx := range committed {
				fr := walFrame(page, tx)
				r.do(fmt.Sprintf("checkpoint page %d", page), func() error { _, err := db.WriteAt(fr[8:], int64(page)*walPage); return err })
			}
			r.do("checkpoint: fsync db", db.Sync)
			r.do("checkpoint: truncate wal", func() error { return wal.Truncate(0) })
			r.do("checkpoint: fsync wal", wal.Sync)
			walOff = 0
		}
	}
	r.do("close wal", wal.Close)
	r.do("close db", db.Close)

	states := r.checkEveryPrefix()
	// Crash consistency as the app sees it: at every prefix, recovery
	// yields at least every transaction committed (fsynced) in that
	// prefix, and never a page from a transaction the master had not
	// written yet.
	for k, s := range states {
		got := recoverDB(s)
		var want map[uint32]int
		for _, p := range promises {
			if p.seq <= uint64(k) {
				want = p.pages
			}
		}
		for page, tx := range want {
			if got[page] < tx {
				t.Fatalf("prefix %d: page %d recovers txn %d, but txn %d was committed", k, page, got[page], tx)
			}
		}
	}
	t.Logf("%d ops, %d prefixes checked, %d commits", len(j.Ops()), len(states), len(promises))
}

func clonePages(m map[uint32]int) map[uint32]int {
	c := make(map[uint32]int, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
