package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
)

// The demo and the failover benchmark are programs, not tests, but they run the same cluster
// as the e2e tests, whose helpers (internal/testutil/consul, this package) take a testing.TB for logging,
// temporary directories, cleanups and fatal errors. programTB is that stand-in: the embedded
// (nil) testing.TB only satisfies the interface's unexported method; every method the helpers
// call is implemented here.
type programTB struct {
	testing.TB
	name string
	log  io.Writer

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

type fatal struct{ msg string }

func (t *programTB) Name() string { return t.name }
func (t *programTB) Helper()      {}
func (t *programTB) Log(args ...any) {
	_, _ = fmt.Fprintln(t.log, args...)
}

func (t *programTB) Logf(format string, args ...any) {
	_, _ = fmt.Fprintf(t.log, format+"\n", args...)
}

func (t *programTB) Errorf(format string, args ...any) {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	_, _ = fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
}

func (t *programTB) Error(args ...any) { t.Errorf("%s", fmt.Sprint(args...)) }

func (t *programTB) Fatalf(format string, args ...any) {
	panic(fatal{fmt.Sprintf(format, args...)})
}

func (t *programTB) Fatal(args ...any) { panic(fatal{fmt.Sprint(args...)}) }

func (t *programTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *programTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *programTB) TempDir() string {
	d, err := os.MkdirTemp("", "bedrock-"+t.name+"-")
	if err != nil {
		panic(fatal{fmt.Sprintf("temp dir: %v", err)})
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func (t *programTB) runCleanups() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		f()
	}
}

// RunProgram runs f as a program: progress lines go to log, a fatal error or f's error is
// printed on stderr, everything f started is cleaned up (also on Ctrl-C, which cancels ctx),
// and the exit code is returned.
func RunProgram(name string, log io.Writer, f func(ctx context.Context, t testing.TB) error) (code int) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t := &programTB{name: name, log: log}
	defer func() {
		if r := recover(); r != nil {
			ft, ok := r.(fatal)
			if !ok {
				t.runCleanups()
				panic(r)
			}
			fmt.Fprintf(os.Stderr, "%s: %s\n", name, ft.msg)
			code = 1
		}
		t.runCleanups()
	}()
	err := f(ctx, t)
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		fmt.Fprintf(os.Stderr, "%s: interrupted; cleaning up\n", name)
		return 130
	case err != nil:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	case t.Failed():
		return 1
	}
	return 0
}
