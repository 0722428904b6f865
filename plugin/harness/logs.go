package harness

import (
	"bytes"
	"errors"
	"fmt"

	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TaskLogs plays Nomad's log collector for one task: it creates the task's
// stdout/stderr FIFOs, keeps reading them across writer restarts (a plugin
// or logger restart closes and re-opens the write end), and appends what it
// reads to alloc/logs/<task>.stdout.0 like the client's rotator.
type TaskLogs struct {
	StdoutFIFO string
	StderrFIFO string

	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
	wg     sync.WaitGroup
}

func openTaskLogs(allocDir, task string) (*TaskLogs, error) {
	dir := filepath.Join(allocDir, "alloc", "logs")
	l := &TaskLogs{
		StdoutFIFO: filepath.Join(dir, "."+task+".stdout.fifo"),
		StderrFIFO: filepath.Join(dir, "."+task+".stderr.fifo"),
		done:       make(chan struct{}),
	}
	for _, p := range []string{l.StdoutFIFO, l.StderrFIFO} {
		if err := syscall.Mkfifo(p, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("mkfifo %s: %w", p, err)
		}
	}
	l.wg.Add(2)
	go l.follow(l.StdoutFIFO, filepath.Join(dir, task+".stdout.0"), &l.stdout)
	go l.follow(l.StderrFIFO, filepath.Join(dir, task+".stderr.0"), &l.stderr)
	return l, nil
}

func (l *TaskLogs) follow(fifo, file string, buf *bytes.Buffer) {
	defer l.wg.Done()
	out, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644) //nolint:gosec // log file in the alloc dir
	if err != nil {
		return
	}
	defer func() { _ = out.Close() }()
	chunk := make([]byte, 32*1024)
	for {
		// O_RDWR keeps the FIFO open even with no writer, so a writer that
		// goes away (plugin killed) never makes us miss its successor.
		f, err := os.OpenFile(fifo, os.O_RDWR, 0) //nolint:gosec // our FIFO
		if err != nil {
			return
		}
		go func() {
			<-l.done
			_ = f.Close()
		}()
		for {
			n, err := f.Read(chunk)
			if n > 0 {
				l.mu.Lock()
				buf.Write(chunk[:n])
				l.mu.Unlock()
				_, _ = out.Write(chunk[:n])
			}
			if err != nil {
				break
			}
		}
		select {
		case <-l.done:
			return
		default:
		}
		_ = f.Close()
	}
}

// Stdout returns everything read from the stdout FIFO so far.
func (l *TaskLogs) Stdout() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stdout.String()
}

// Stderr returns everything read from the stderr FIFO so far.
func (l *TaskLogs) Stderr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stderr.String()
}

// WaitFor polls stdout+stderr until they contain s or the timeout passes.
func (l *TaskLogs) WaitFor(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(l.Stdout(), s) || strings.Contains(l.Stderr(), s) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("logs never contained %q; stdout: %q stderr: %q", s, tail(l.Stdout()), tail(l.Stderr()))
}

func tail(s string) string {
	if len(s) > 500 {
		return s[len(s)-500:]
	}
	return s
}

// Close stops reading.
func (l *TaskLogs) Close() {
	select {
	case <-l.done:
		return
	default:
		close(l.done)
	}
	l.wg.Wait()
}
