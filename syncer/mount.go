package syncer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/capture"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/replica"
)

// In a capture mode the master serves the data to its app through a capture mount
// (syncer/capture) at Config.CaptureMount, backed by Config.DataDir, with the master as the
// mount's journal. The mount exists exactly while this syncer is master: it is made once
// the first scan is done and before the election may announce master (Serving), so the app
// never starts on the bare mount point; it is taken away when the mastership ends. Taking
// it away is also a fence: once the server stops, every access the old app still makes
// fails (ENOTCONN) instead of writing where nobody replicates.

// unmountWait bounds how long a mastership's end waits for the mount to go (the app still
// holding files open keeps a lazily detached mount alive).
const unmountWait = 10 * time.Second

func (s *Syncer) syncAcks() int {
	if s.cfg.Mode != ModeSync {
		return 0
	}
	return s.cfg.SyncAcks
}

// serveMount mounts once m is ready and unmounts when ctx ends.
func (s *Syncer) serveMount(ctx context.Context, m *replica.Master) {
	select {
	case <-ctx.Done():
		return
	case <-m.Ready():
	}
	detachDead(s.cfg.CaptureMount)
	if err := os.MkdirAll(s.cfg.CaptureMount, 0o755); err != nil {
		s.mountFailed(fmt.Errorf("capture mount point: %w", err))
		return
	}
	srv, err := capture.Mount(s.cfg.DataDir, s.cfg.CaptureMount, m, capture.Options{AllowOther: true})
	if err != nil {
		s.mountFailed(err)
		return
	}
	m.SetPause(srv.Pause)
	s.mu.Lock()
	s.mounted = srv
	s.mu.Unlock()
	s.log.Info("serving the app's data through the capture mount", "mount", s.cfg.CaptureMount, "mode", s.cfg.Mode)
	<-ctx.Done()
	s.mu.Lock()
	s.mounted = nil
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- srv.Unmount() }()
	select {
	case err := <-done:
		if err != nil {
			s.log.Warn("capture unmount", "error", err)
		} else {
			s.log.Info("capture mount removed", "mount", s.cfg.CaptureMount)
		}
	case <-time.After(unmountWait):
		s.log.Warn("the capture mount is still in use after the mastership ended; it is detached and goes when the app lets go", "mount", s.cfg.CaptureMount)
	}
}

// mountFailed: a master that cannot mount cannot let its app run; it steps down.
func (s *Syncer) mountFailed(err error) {
	s.log.Error("cannot serve the capture mount; stepping down", "error", err)
	s.setErr(err)
	s.fail(err)
}

// detachDead removes a mount left at p by a syncer that died (its FUSE connection is gone:
// every access fails with ENOTCONN), so the new mount does not stack on a dead one.
func detachDead(p string) {
	if _, err := os.Stat(p); err != nil && errors.Is(err, unix.ENOTCONN) {
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
}
