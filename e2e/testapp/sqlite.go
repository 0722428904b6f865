package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // pure Go: the test image is a static binary FROM scratch
)

// sqliteWriter is the stale-clone workload: an app we did not tune for Bedrock, committing one
// SQLite transaction after another into the replicated data dir (WAL, synchronous=FULL, so a
// commit is on disk when it returns), each row carrying the next id, the term the app saw and
// its instance. After every commit it appends the acknowledged id to a witness file outside the
// data dir, in the writer's line format ("w term=T id=I seq=<row id> t=UNIXNANO"), so the tests
// can tell which transactions were acknowledged, when, and by which master, and whether the
// new master's database holds every one of them.
func sqliteWriter(args []string) int {
	fs := flag.NewFlagSet("sqlite", flag.ContinueOnError)
	consulAddr := fs.String("consul", "", "the node's Consul HTTP address (host:port)")
	key := fs.String("key", "", "the group's leader key in Consul's KV")
	id := fs.String("id", "", "instance id stamped on every row")
	db := fs.String("db", "/data/app.db", "the database, in the replicated data dir")
	witness := fs.String("witness", "/local/witness.log", "file outside the data dir that records every acknowledged commit")
	every := fs.Duration("every", 5*time.Millisecond, "pause between commits")
	checkpoint := fs.Int("wal-autocheckpoint", 0, "checkpoint the WAL into the database every N pages (SQLite's wal_autocheckpoint; 0: its default, 1000)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	term := readTerm(ctx, *consulAddr, *key)
	dsn := "file:" + *db + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)"
	if *checkpoint > 0 {
		dsn += fmt.Sprintf("&_pragma=wal_autocheckpoint(%d)", *checkpoint)
	}
	conn, err := sql.Open("sqlite", dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sqlite:", err)
		return 1
	}
	defer func() { _ = conn.Close() }()
	conn.SetMaxOpenConns(1)
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS tx (id INTEGER PRIMARY KEY, term INTEGER NOT NULL, writer TEXT NOT NULL, at INTEGER NOT NULL)`); err != nil {
		fmt.Fprintln(os.Stderr, "sqlite: schema:", err)
		return 1
	}
	var last sql.NullInt64
	if err := conn.QueryRowContext(ctx, `SELECT max(id) FROM tx`).Scan(&last); err != nil {
		fmt.Fprintln(os.Stderr, "sqlite: reading the last id:", err)
		return 1
	}
	wit, err := openWitness(*witness)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sqlite:", err)
		return 1
	}
	defer func() { _ = wit.Close() }()
	fmt.Printf("sqlite: term=%d id=%s continuing after row %d\n", term, *id, last.Int64)
	next := last.Int64 + 1
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		now := time.Now()
		if _, err := conn.ExecContext(ctx, `INSERT INTO tx (id, term, writer, at) VALUES (?, ?, ?, ?)`, next, term, *id, now.UnixNano()); err != nil {
			if ctx.Err() != nil {
				return 0
			}
			fmt.Fprintln(os.Stderr, "sqlite: commit:", err)
			return 1
		}
		// acknowledged: the commit returned
		if _, err := fmt.Fprintf(wit, "w term=%d id=%s seq=%d t=%d\n", term, *id, next, time.Now().UnixNano()); err != nil {
			fmt.Fprintln(os.Stderr, "sqlite: witness:", err)
			return 1
		}
		next++
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
	}
}
