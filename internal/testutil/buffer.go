package testutil

import (
	"bytes"
	"sync"
)

// Buffer collects a subprocess's output while the test reads it: a bytes.Buffer that is safe
// for one writer (os/exec's copying goroutine) and concurrent readers.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
