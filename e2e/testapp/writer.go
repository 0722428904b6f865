package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// writer is the failover tests' app: it appends a stamped line to a file in
// the replicated data dir at a steady pace and the same line to a witness
// file outside it. Each line carries the election term the app saw when it
// started (the leader key's LockIndex, read from the node's Consul agent),
// its instance id, a sequence number and the wall time, so the tests can
// tell from the lines alone whether two masters ever wrote at the same
// time and whether a write acknowledged by a clone was lost.
func writer(args []string) int {
	fs := flag.NewFlagSet("writer", flag.ContinueOnError)
	consulAddr := fs.String("consul", "", "the node's Consul HTTP address (host:port)")
	key := fs.String("key", "", "the group's leader key in Consul's KV")
	id := fs.String("id", "", "instance id stamped on every line")
	file := fs.String("file", "/data/writes.log", "replicated file the writes go to")
	witness := fs.String("witness", "/local/witness.log", "file outside the data dir that records every write")
	every := fs.Duration("every", 20*time.Millisecond, "pause between writes")
	addr := fs.String("addr", "", "serve the last write over HTTP on this address (optional)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	term := readTerm(ctx, *consulAddr, *key)
	out, err := os.OpenFile(*file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644) //nolint:gosec // test app
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		return 1
	}
	defer func() { _ = out.Close() }()
	wit, err := openWitness(*witness)
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		return 1
	}
	defer func() { _ = wit.Close() }()

	var last atomic.Value
	last.Store("")
	if *addr != "" {
		srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = fmt.Fprint(w, last.Load())
		})}
		go func() { _ = srv.ListenAndServe() }()
		defer func() { _ = srv.Close() }()
	}
	fmt.Printf("writer: term=%d id=%s\n", term, *id)
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		line := fmt.Sprintf("w term=%d id=%s seq=%d t=%d\n", term, *id, seq, time.Now().UnixNano())
		// the witness first: a line there that is missing from the data
		// was never written; the opposite cannot happen
		if _, err := wit.WriteString(line); err != nil {
			fmt.Fprintln(os.Stderr, "writer: witness:", err)
			return 1
		}
		if _, err := out.WriteString(line); err != nil {
			fmt.Fprintln(os.Stderr, "writer:", err)
			return 1
		}
		last.Store(line)
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
	}
}

// openWitness opens (creating it and its directory) the append-only record of every write,
// kept outside the data dir.
func openWitness(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { //nolint:gosec // test app
		return nil, fmt.Errorf("witness: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644) //nolint:gosec // test app
	if err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	return f, nil
}

// readTerm returns the leader key's LockIndex, retrying for a few seconds;
// 0 when Consul cannot say (the lines then show an unknown term).
func readTerm(ctx context.Context, addr, key string) uint64 {
	if addr == "" || key == "" {
		return 0
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		t, err := getLockIndex(ctx, addr, key)
		if err == nil {
			return t
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "writer: reading the term:", err)
			return 0
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getLockIndex(ctx context.Context, addr, key string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/kv/"+key+"?consistent", nil)
	if err != nil {
		return 0, fmt.Errorf("request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("consul: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, errors.New("consul: " + strconv.Itoa(resp.StatusCode))
	}
	var pairs []struct {
		LockIndex uint64
		Session   string
	}
	if err := json.NewDecoder(resp.Body).Decode(&pairs); err != nil {
		return 0, fmt.Errorf("consul: %w", err)
	}
	if len(pairs) == 0 || pairs[0].Session == "" {
		return 0, errors.New("the lock is free")
	}
	return pairs[0].LockIndex, nil
}
