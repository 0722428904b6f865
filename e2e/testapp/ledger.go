package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/ledger"
)

// ledgerWriter is the second dependent-files workload (issue 16), of our own: each commit
// appends a record to ledger.log and fdatasyncs it, then rewrites ledger.idx in place (count,
// length and CRC of the committed log) and fdatasyncs that, then records the acknowledged id
// in the witness outside the data dir ("w term=T id=I seq=<record id> t=UNIXNANO"). At start
// it verifies the pair as it finds it and refuses to run on an inconsistent one (exit 3), as a
// database refuses a corrupt file; an uncommitted tail of the log is cut off.
func ledgerWriter(args []string) int {
	fs := flag.NewFlagSet("ledger", flag.ContinueOnError)
	consulAddr := fs.String("consul", "", "the node's Consul HTTP address (host:port)")
	key := fs.String("key", "", "the group's leader key in Consul's KV")
	id := fs.String("id", "", "instance id stamped on every record")
	dir := fs.String("data", "/data", "the replicated data dir")
	witness := fs.String("witness", "/local/witness.log", "file outside the data dir that records every acknowledged commit")
	every := fs.Duration("every", 5*time.Millisecond, "pause between commits")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	term := readTerm(ctx, *consulAddr, *key)
	l, err := openLedger(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		if errors.Is(err, ledger.ErrInconsistent) {
			return 3
		}
		return 1
	}
	defer l.close()
	wit, err := openWitness(*witness)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		return 1
	}
	defer func() { _ = wit.Close() }()
	fmt.Printf("ledger: term=%d id=%s continuing after record %d (%d bytes)\n", term, *id, l.x.Count, l.x.Len)
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		r := ledger.Record{ID: l.x.Count + 1, Term: term, Writer: *id, At: time.Now()}
		if err := l.commit(r); err != nil {
			fmt.Fprintln(os.Stderr, "ledger: commit:", err)
			return 1
		}
		if _, err := fmt.Fprintf(wit, "w term=%d id=%s seq=%d t=%d\n", term, *id, r.ID, time.Now().UnixNano()); err != nil {
			fmt.Fprintln(os.Stderr, "ledger: witness:", err)
			return 1
		}
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
	}
}

type ledgerFiles struct {
	log, idx *os.File
	x        ledger.Index
	buf      []byte
}

// openLedger verifies the pair as a stream (the log outgrows the app's memory limit over a
// long run) and opens both for writing.
func openLedger(dir string) (*ledgerFiles, error) {
	idxB, err := os.ReadFile(filepath.Join(dir, ledger.IndexFile)) //nolint:gosec // the app's own file
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the index: %w", err)
	}
	l := &ledgerFiles{}
	if l.log, err = os.OpenFile(filepath.Join(dir, ledger.LogFile), os.O_RDWR|os.O_CREATE, 0o644); err != nil { //nolint:gosec // test app
		return nil, fmt.Errorf("opening the log: %w", err)
	}
	st, err := l.log.Stat()
	if err == nil {
		l.x, err = ledger.Check(l.log, st.Size(), idxB, nil)
	}
	if err != nil {
		_ = l.log.Close()
		return nil, err
	}
	x := l.x
	if l.idx, err = os.OpenFile(filepath.Join(dir, ledger.IndexFile), os.O_RDWR|os.O_CREATE, 0o644); err != nil { //nolint:gosec // test app
		_ = l.log.Close()
		return nil, fmt.Errorf("opening the index: %w", err)
	}
	// an uncommitted tail (a crash between the two writes) goes
	if err := l.log.Truncate(x.Len); err != nil {
		l.close()
		return nil, fmt.Errorf("cutting the log's uncommitted tail: %w", err)
	}
	return l, nil
}

// commit makes r durable in the log, then in the index: the order a crash-consistent replica
// must keep.
func (l *ledgerFiles) commit(r ledger.Record) error {
	l.buf = ledger.AppendRecord(l.buf[:0], r)
	if _, err := l.log.WriteAt(l.buf, l.x.Len); err != nil {
		return fmt.Errorf("log: %w", err)
	}
	if err := syscall.Fdatasync(int(l.log.Fd())); err != nil { //nolint:gosec // a descriptor
		return fmt.Errorf("log fdatasync: %w", err)
	}
	next := ledger.Index{Count: r.ID, Len: l.x.Len + int64(len(l.buf)), CRC: ledger.Update(l.x.CRC, l.buf)}
	if _, err := l.idx.WriteAt(next.Encode(), 0); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	if err := syscall.Fdatasync(int(l.idx.Fd())); err != nil { //nolint:gosec // a descriptor
		return fmt.Errorf("index fdatasync: %w", err)
	}
	l.x = next
	return nil
}

func (l *ledgerFiles) close() {
	_ = l.log.Close()
	_ = l.idx.Close()
}
