package capture

import (
	"bytes"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	_ "modernc.org/sqlite"
)

type reqLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *reqLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *reqLog) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.buf.String()
	l.buf.Reset()
	return s
}

var rxRe = regexp.MustCompile(`rx \d+: ([A-Z_]+)`)

func countReqs(s string) (int, string) {
	m := map[string]int{}
	n := 0
	for _, x := range rxRe.FindAllStringSubmatch(s, -1) {
		m[x[1]]++
		n++
	}
	var ks []string
	for k, v := range m {
		ks = append(ks, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(ks)
	return n, strings.Join(ks, " ")
}

func TestTraceRequests(t *testing.T) {
	if os.Getenv("CAPTURE_TRACE") == "" {
		t.Skip("CAPTURE_TRACE unset")
	}
	l := &reqLog{}
	_, mnt, _ := mountT(t, Options{Debug: true, logger: log.New(l, "", 0), NoDefaultPermissions: os.Getenv("CAPTURE_TRACE") == "noperms"})
	data := make([]byte, 4096)
	save := func(i int) {
		tmp := filepath.Join(mnt, fmt.Sprintf(".f%d.tmp", i%3))
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(data)
		f.Close()
		if err := os.Rename(tmp, filepath.Join(mnt, fmt.Sprintf("f%d", i%3))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		save(i)
	}
	l.take()
	for i := 6; i < 12; i++ {
		save(i)
	}
	s := l.take()
	n, k := countReqs(s)
	t.Logf("smallfile: %.1f requests per save: %s", float64(n)/6, k)
	if testing.Verbose() {
		t.Log(s)
	}
	f, _ := os.OpenFile(filepath.Join(mnt, "db"), os.O_RDWR|os.O_CREATE, 0o644)
	f.WriteAt(data, 0)
	f.Sync()
	l.take()
	for i := range 6 {
		f.WriteAt(data, int64(i)*4096)
		f.Sync()
	}
	s = l.take()
	n, k = countReqs(s)
	t.Logf("rand4k_fsync: %.1f requests per op: %s", float64(n)/6, k)
	if testing.Verbose() {
		t.Log(s)
	}
	f.Close()

	db, err := sql.Open("sqlite", "file:"+filepath.Join(mnt, "app.db")+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		db.Exec(`INSERT INTO t (v) VALUES (?)`, data[:200])
	}
	l.take()
	for range 6 {
		db.Exec(`INSERT INTO t (v) VALUES (?)`, data[:200])
	}
	s = l.take()
	n, k = countReqs(s)
	t.Logf("sqlite: %.1f requests per insert: %s", float64(n)/6, k)
	if testing.Verbose() {
		t.Log(s)
	}
}
