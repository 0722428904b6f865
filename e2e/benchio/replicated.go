package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/replica"
)

// runReplicated runs w on a mount whose journal is a real capture-mode master with one real
// clone (in dir+".clone") over loopback: what the async and sync modes cost the app.
func runReplicated(ctx context.Context, dir, mnt string, tg target, w workload, dur time.Duration) (result, uint64, error) {
	cdir := dir + ".clone"
	if err := os.Mkdir(cdir, 0o755); err != nil {
		return result{}, 0, fmt.Errorf("clone directory: %w", err)
	}
	defer os.RemoveAll(cdir)
	mroot, err := os.OpenRoot(dir)
	if err != nil {
		return result{}, 0, err
	}
	defer mroot.Close()
	croot, err := os.OpenRoot(cdir)
	if err != nil {
		return result{}, 0, err
	}
	defer croot.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, 0, err
	}
	secret := []byte("benchio-secret-0123456789abcdef!")
	acks := 0
	if tg.repl == "sync" {
		acks = 1
	}
	m := replica.NewMaster(replica.MasterConfig{Dir: dir, Root: mroot, Term: 1, Listener: ln, Secret: secret, Capture: true, SyncAcks: acks})
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
	st, err := replica.OpenState(croot)
	if err != nil {
		_ = srv.Unmount()
		return result{}, 0, err
	}
	c := replica.NewClone(replica.CloneConfig{Root: croot, MasterAddr: ln.Addr().String(), Secret: secret, ID: "bench", State: st, Capture: true})
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(ctx) }()
	defer stopAndReport(cancel, "clone", cdone)
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
