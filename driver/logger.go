package driver

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// LoggerCommand is the hidden subcommand main dispatches to RunLogger.
const LoggerCommand = "docker-logger"

// The log follower.
//
// A container's stdout/stderr reach Nomad through the task's log FIFOs. The
// plugin does not copy them itself: it starts this follower as a separate
// process in its own session (the same binary, `docker-logger`), so killing
// the plugin does not stop the logs. It follows the engine's log stream
// with timestamps and, after every line it writes, records the line's
// timestamp and how many lines with that same timestamp it has written
// (per stream) in a small position file. A follower that is restarted
// (after a crash, or when a recovering plugin finds it gone) asks the
// engine for logs since that timestamp and skips the lines it already
// wrote, so nothing is lost and a line is duplicated only if the follower
// dies between writing it and recording it: at most one line per stream
// per follower crash.

// streamPos is the position of one stream.
type streamPos struct {
	TS time.Time `json:"ts"`
	N  int       `json:"n"` // lines written with timestamp TS
}

// loggerPos is the position file's content.
type loggerPos struct {
	Stdout streamPos `json:"stdout"`
	Stderr streamPos `json:"stderr"`
}

// posFileSize is the fixed size the position is padded to, so each update
// is one write at offset 0 that can't leave a torn or stale tail.
const posFileSize = 256

// RunLogger follows a container's logs into the task's FIFOs until the
// container has stopped and its logs are drained. args are flags:
// -endpoint, -container, -stdout, -stderr, -state, and optionally
// -tls-ca/-tls-cert/-tls-key. It returns the process exit code.
func RunLogger(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet(LoggerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	endpoint := fs.String("endpoint", defaultDockerSocket, "Docker endpoint")
	id := fs.String("container", "", "container id")
	stdoutPath := fs.String("stdout", "", "stdout FIFO")
	stderrPath := fs.String("stderr", "", "stderr FIFO")
	statePath := fs.String("state", "", "position file")
	tlsCA := fs.String("tls-ca", "", "CA file")
	tlsCert := fs.String("tls-cert", "", "client certificate")
	tlsKey := fs.String("tls-key", "", "client key")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *id == "" || *stdoutPath == "" || *stderrPath == "" || *statePath == "" {
		_, _ = fmt.Fprintln(stderr, "docker-logger: -container, -stdout, -stderr and -state are required")
		return 2
	}
	s := &settings{endpoint: *endpoint}
	if *tlsCA != "" || *tlsCert != "" {
		s.tls = &TLSConfig{CAFile: *tlsCA, CertFile: *tlsCert, KeyFile: *tlsKey}
	}
	cli, err := newDockerClient(s)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "docker-logger:", err)
		return 1
	}
	defer func() { _ = cli.Close() }()
	f := &follower{cli: cli, id: *id, errOut: stderr}
	if err := f.openState(*statePath); err != nil {
		_, _ = fmt.Fprintln(stderr, "docker-logger:", err)
		return 1
	}
	defer func() { _ = f.state.Close() }()
	f.out = &fifoWriter{path: *stdoutPath}
	f.err = &fifoWriter{path: *stderrPath}
	defer f.out.close()
	defer f.err.close()
	if err := f.run(ctx); err != nil {
		_, _ = fmt.Fprintln(stderr, "docker-logger:", err)
		return 1
	}
	return 0
}

type follower struct {
	cli    *client.Client
	id     string
	errOut io.Writer

	state *os.File
	mu    sync.Mutex
	pos   loggerPos
	out   *fifoWriter
	err   *fifoWriter
}

func (f *follower) openState(p string) error {
	st, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("position file: %w", err)
	}
	f.state = st
	b := make([]byte, posFileSize)
	n, _ := st.ReadAt(b, 0)
	if trimmed := strings.TrimSpace(string(b[:n])); trimmed != "" {
		if err := json.Unmarshal([]byte(trimmed), &f.pos); err != nil {
			f.pos = loggerPos{} // unreadable: start over (duplicates, never loss)
		}
	}
	return nil
}

// saveLocked writes the position; f.mu is held.
func (f *follower) saveLocked() {
	b, err := json.Marshal(f.pos)
	if err != nil || len(b) > posFileSize {
		return
	}
	buf := make([]byte, posFileSize)
	copy(buf, b)
	for i := len(b); i < posFileSize; i++ {
		buf[i] = ' '
	}
	_, _ = f.state.WriteAt(buf, 0)
}

// since is where the engine should start: the older of the two streams'
// positions (each stream then skips what it already wrote).
func (f *follower) since() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, b := f.pos.Stdout.TS, f.pos.Stderr.TS
	if a.IsZero() || b.IsZero() {
		// A stream with nothing written yet needs the whole history (the
		// other one skips what it already wrote).
		return ""
	}
	ts := a
	if b.Before(a) {
		ts = b
	}
	return fmt.Sprintf("%d.%09d", ts.Unix(), ts.Nanosecond())
}

func (f *follower) run(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for {
		info, err := f.cli.ContainerInspect(ctx, f.id)
		if err != nil {
			if cerrdefs.IsNotFound(err) || ctx.Err() != nil {
				return nil //nolint:nilerr // removed or told to stop: nothing more to follow
			}
			time.Sleep(backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		tty := info.Config != nil && info.Config.Tty
		running := info.State != nil && (info.State.Running || info.State.Restarting)
		err = f.followOnce(ctx, tty)
		if ctx.Err() != nil {
			return nil //nolint:nilerr // told to stop
		}
		if err == nil && !running {
			return nil // the stream of a stopped container ended: drained
		}
		if err == nil {
			// The stream ended: either the container just stopped (check
			// again, then one more pass drains anything left) or the engine
			// went away.
			info, ierr := f.cli.ContainerInspect(ctx, f.id)
			if ierr == nil && info.State != nil && !info.State.Running && !info.State.Restarting {
				return f.followOnce(ctx, tty)
			}
			if cerrdefs.IsNotFound(ierr) {
				return nil
			}
		} else {
			_, _ = fmt.Fprintln(f.errOut, "docker-logger: stream:", err)
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

// followOnce reads one log stream from the engine until it ends.
func (f *follower) followOnce(ctx context.Context, tty bool) error {
	rc, err := f.cli.ContainerLogs(ctx, f.id, container.LogsOptions{
		ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true, Since: f.since(),
	})
	if err != nil {
		return fmt.Errorf("opening logs: %w", err)
	}
	defer func() { _ = rc.Close() }()
	if tty {
		// A tty merges the streams into raw text: split it into lines.
		// (Messages over the engine's 16 KiB chunk size then carry an
		// inner timestamp; tty logs that long are rare.)
		return f.lines(rc, f.newSink(f.out, &f.pos.Stdout))
	}
	return f.frames(rc)
}

// sink writes one stream's messages, skipping those its position says were
// already written.
type sink struct {
	f      *follower
	w      *fifoWriter
	pos    *streamPos
	skipTS time.Time
	skipN  int
	seen   int
}

func (f *follower) newSink(w *fifoWriter, pos *streamPos) *sink {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &sink{f: f, w: w, pos: pos, skipTS: pos.TS, skipN: pos.N}
}

// message handles one "<RFC3339Nano timestamp> <text>" message.
func (s *sink) message(raw []byte) error {
	tsText, msg, ok := strings.Cut(string(raw), " ")
	ts, perr := time.Parse(time.RFC3339Nano, tsText)
	if !ok || perr != nil {
		msg, ts = string(raw), time.Now() // not timestamped: pass through
	}
	if !s.skipTS.IsZero() {
		switch {
		case ts.Before(s.skipTS):
			return nil
		case ts.Equal(s.skipTS) && s.seen < s.skipN:
			s.seen++
			return nil
		}
	}
	if err := s.w.write([]byte(msg)); err != nil {
		return err
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if ts.Equal(s.pos.TS) {
		s.pos.N++
	} else {
		s.pos.TS, s.pos.N = ts, 1
	}
	s.f.saveLocked()
	return nil
}

// frames reads the engine's multiplexed stream: an 8-byte header (stream,
// 3 zero bytes, big-endian length) then one log message per frame, so a
// long line split by the engine into several messages keeps each piece's
// timestamp apart.
func (f *follower) frames(r io.Reader) error {
	out, errs := f.newSink(f.out, &f.pos.Stdout), f.newSink(f.err, &f.pos.Stderr)
	br := bufio.NewReaderSize(r, 64*1024)
	var hdr [8]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading logs: %w", err)
		}
		n := int(binary.BigEndian.Uint32(hdr[4:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("reading logs: %w", err)
		}
		dst := out
		if hdr[0] == 2 {
			dst = errs
		}
		if err := dst.message(buf); err != nil {
			return err
		}
	}
}

// lines splits a raw (tty) stream into messages at newlines.
func (f *follower) lines(r io.Reader, s *sink) error {
	br := bufio.NewReaderSize(r, 64*1024)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if werr := s.message(line); werr != nil {
				return werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading logs: %w", err)
		}
	}
}

// fifoWriter writes to a Nomad log FIFO, (re)opening it when a reader is
// there. Nomad's log collector may restart; a write that fails because the
// reader went away is retried on a new open.
type fifoWriter struct {
	path string
	f    *os.File
}

func (w *fifoWriter) open() error {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		// Non-blocking open fails with ENXIO while no reader exists, so a
		// missing collector can't hang us forever.
		f, err := os.OpenFile(w.path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			// The descriptor stays non-blocking: Go's poller parks a write
			// on a full FIFO instead of failing it.
			w.f = f
			return nil
		}
		if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
			return fmt.Errorf("opening log fifo: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *fifoWriter) write(b []byte) error {
	for attempt := 0; ; attempt++ {
		if w.f == nil {
			if err := w.open(); err != nil {
				return err
			}
		}
		_, err := w.f.Write(b)
		if err == nil {
			return nil
		}
		_ = w.f.Close()
		w.f = nil
		if attempt >= 3 {
			return fmt.Errorf("writing log fifo %s: %w", w.path, err)
		}
	}
}

func (w *fifoWriter) close() {
	if w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
}
