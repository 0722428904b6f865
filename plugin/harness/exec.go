package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// Exec is an interactive exec session, as `nomad alloc exec` drives it.
type Exec struct {
	stream driverpb.Driver_ExecTaskStreamingClient
	sendMu sync.Mutex

	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	result *plugin.ExitResult
	err    error
	done   chan struct{}
}

// StartExec opens an exec stream: the setup frame first, then (for a tty)
// the terminal size, as the client sends them.
func (c *Client) StartExec(ctx context.Context, t *Task, tty bool, size *plugin.TermSize, cmd ...string) (*Exec, error) {
	stream, err := c.Plugin.Driver.ExecTaskStreaming(ctx)
	if err != nil {
		return nil, plugin.FromStatus(err)
	}
	e := &Exec{stream: stream, done: make(chan struct{})}
	if err := stream.Send(&driverpb.ExecStreamRequest{Setup: &driverpb.ExecStreamRequest_Setup{TaskId: t.ID(), Command: cmd, Tty: tty}}); err != nil {
		return nil, fmt.Errorf("exec setup: %w", err)
	}
	if tty && size != nil {
		if err := e.Resize(size.Height, size.Width); err != nil {
			return nil, err
		}
	}
	go e.receive()
	return e, nil
}

func (e *Exec) receive() {
	defer close(e.done)
	for {
		resp, err := e.stream.Recv()
		if err != nil {
			e.mu.Lock()
			if e.result == nil {
				if errors.Is(err, io.EOF) {
					e.err = errors.New("exec stream ended without an exit result")
				} else {
					e.err = plugin.FromStatus(err)
				}
			}
			e.mu.Unlock()
			return
		}
		e.mu.Lock()
		if d := resp.GetStdout().GetData(); len(d) > 0 {
			e.stdout.Write(d)
		}
		if d := resp.GetStderr().GetData(); len(d) > 0 {
			e.stderr.Write(d)
		}
		if resp.GetExited() {
			e.result = plugin.ExitResultFromProto(resp.GetResult(), "")
		}
		e.mu.Unlock()
	}
}

// Write sends stdin.
func (e *Exec) Write(p []byte) (int, error) {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	if err := e.stream.Send(&driverpb.ExecStreamRequest{Stdin: &driverpb.ExecIO{Data: p}}); err != nil {
		return 0, fmt.Errorf("exec stdin: %w", err)
	}
	return len(p), nil
}

// CloseStdin signals the end of input.
func (e *Exec) CloseStdin() error {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	if err := e.stream.Send(&driverpb.ExecStreamRequest{Stdin: &driverpb.ExecIO{Close: true}}); err != nil {
		return fmt.Errorf("exec stdin close: %w", err)
	}
	return nil
}

// Resize sends a terminal size change.
func (e *Exec) Resize(height, width int) error {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	err := e.stream.Send(&driverpb.ExecStreamRequest{TtySize: &driverpb.ExecStreamRequest_TermSize{Height: int32(height), Width: int32(width)}}) //nolint:gosec // terminal sizes are small
	if err != nil {
		return fmt.Errorf("exec resize: %w", err)
	}
	return nil
}

// Wait returns the exit result once the command has exited.
func (e *Exec) Wait(ctx context.Context) (*plugin.ExitResult, error) {
	select {
	case <-e.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for exec: %w", ctx.Err())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.result != nil {
		return e.result, nil
	}
	return nil, e.err
}

// Stdout is the output received so far.
func (e *Exec) Stdout() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stdout.String()
}

// Stderr is the error output received so far.
func (e *Exec) Stderr() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stderr.String()
}
