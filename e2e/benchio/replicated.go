package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/replica"
)

// cloneDir is where the replicated targets' clone keeps its copy (-clone-dir); empty: beside
// the master's.
var cloneDir string

// runReplicated runs w on a mount whose journal is a real capture-mode master with one real
// clone (in dir+".clone", or under -clone-dir) over loopback: what the async and sync modes
// cost the app.
func runReplicated(ctx context.Context, dir, mnt string, tg target, w workload, dur time.Duration) (result, uint64, error) {
	cdir := dir + ".clone"
	if cloneDir != "" {
		cdir = filepath.Join(cloneDir, filepath.Base(dir)+".clone")
	}
	if err := os.Mkdir(cdir, 0o755); err != nil {
		return result{}, 0, fmt.Errorf("clone directory: %w", err)
	}
	defer os.RemoveAll(cdir)
	mroot, err := os.OpenRoot(dir)
	if err != nil {
		return result{}, 0, err
	}
	defer mroot.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, 0, err
	}
	secret := "benchio-secret-0123456789abcdef!"
	acks := 0
	if tg.repl == "sync" {
		acks = 1
	}
	m := replica.NewMaster(replica.MasterConfig{Dir: dir, Root: mroot, Term: 1, Listener: ln, Secret: []byte(secret), Capture: true, SyncAcks: acks})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mdone := make(chan error, 1)
	go func() { mdone <- m.Run(ctx) }()
	defer stopAndReport(cancel, "master", mdone)
	select {
	case <-m.Ready():
	case err := <-mdone:
		return result{}, 0, fmt.Errorf("master: %w", err)
	}
	srv, err := capture.Mount(dir, mnt, m, *tg.opt)
	if err != nil {
		return result{}, 0, fmt.Errorf("mount: %w", err)
	}
	m.SetPause(srv.Pause)
	stopClone, err := startClone(ctx, cdir, ln.Addr().String(), secret)
	if err != nil {
		_ = srv.Unmount()
		return result{}, 0, err
	}
	defer stopClone()
	deadline := time.Now().Add(20 * time.Second)
	for m.JournalClones() < 1 {
		if time.Now().After(deadline) {
			_ = srv.Unmount()
			return result{}, 0, errors.New("the clone was not cut over to the journal within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, err := w.run(ctx, mnt, dur)
	ops := m.Position().Seq
	if uerr := srv.Unmount(); uerr != nil && err == nil {
		err = uerr
	}
	return res, ops, err
}

// cloneNice is the nice level of the clone's process (-clone-nice).
var cloneNice = 19

// cloneEnv carries the clone's settings to the clone process (benchio re-run by itself).
const cloneEnv = "BENCHIO_CLONE"

// startClone runs the clone in a process of its own, benchio itself re-run under nice: in a
// deployment the clone is another node, whose CPU the app does not share; on the one machine
// of the benchmark the clone takes only what the app leaves (at nice 19 the scheduler gives
// it about 1/70 of a contended CPU), so the figure is what the master's side costs the app.
// In sync mode the app waits for the clone, which then has the CPU.
func startClone(ctx context.Context, dir, addr, secret string) (stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("clone: %w", err)
	}
	cmd := exec.CommandContext(ctx, "nice", "-n", strconv.Itoa(cloneNice), self) //nolint:gosec // ourselves
	cmd.Env = append(os.Environ(), cloneEnv+"="+dir+"\n"+addr+"\n"+secret)
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("clone: %w", err)
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}, nil
}

// cloneMain is the clone process: a capture-mode clone of the master at addr, until SIGTERM.
func cloneMain(spec string) int {
	f := strings.SplitN(spec, "\n", 3)
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "benchio clone: bad", cloneEnv)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	root, err := os.OpenRoot(f[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchio clone:", err)
		return 1
	}
	defer root.Close()
	st, err := replica.OpenState(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchio clone:", err)
		return 1
	}
	c := replica.NewClone(replica.CloneConfig{Root: root, MasterAddr: f[1], Secret: []byte(f[2]), ID: "bench", State: st, Capture: true})
	if err := c.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "benchio clone:", err)
		return 1
	}
	return 0
}

// loopbackRTT measures a TCP round trip on loopback (1 byte each way, 2000 times): the floor
// under an fsync in sync mode, which waits for one.
func loopbackRTT(ctx context.Context) (p50, p99 time.Duration) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.Copy(conn, conn)
	}()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return 0, 0
	}
	defer conn.Close()
	b := []byte{1}
	lat := make([]time.Duration, 0, 2000)
	for range 2000 {
		t := time.Now()
		if _, err := conn.Write(b); err != nil {
			break
		}
		if _, err := io.ReadFull(conn, b); err != nil {
			break
		}
		lat = append(lat, time.Since(t))
	}
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

// stopAndReport cancels a run and reports how it ended, unless it ended because it was asked.
func stopAndReport(cancel context.CancelFunc, what string, done <-chan error) {
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	}
}
