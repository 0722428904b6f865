package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// ExecTask runs a command in the task's container to completion (Nomad
// uses it for script checks) and returns its output.
func (d *Driver) ExecTask(ctx context.Context, taskID string, cmd []string, timeout time.Duration) (*plugin.ExecResult, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var stdout, stderr bytes.Buffer
	res, err := d.ExecTaskStreaming(ctx, &plugin.ExecRequest{
		TaskID: taskID, Command: cmd, Stdout: &stdout, Stderr: &stderr,
	})
	if err != nil {
		return nil, err
	}
	return &plugin.ExecResult{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Exit: *res}, nil
}

// ExecTaskStreaming runs an interactive command (`nomad alloc exec`)
// through the engine's exec API on a hijacked connection: stdin is copied
// in (and closed for the command when the user closes it), output out
// (demultiplexed unless a tty merges it), terminal resizes applied. It
// returns after the command has exited and all its output was written.
func (d *Driver) ExecTaskStreaming(ctx context.Context, req *plugin.ExecRequest) (*plugin.ExitResult, error) {
	h, err := d.mustHandle(req.TaskID)
	if err != nil {
		return nil, err
	}
	if len(req.Command) == 0 {
		return nil, plugin.NewFatalError(errors.New("exec: no command"))
	}
	if _, _, done := h.exitResult(); done {
		return nil, fmt.Errorf("exec: task %s is not running", req.TaskID)
	}
	cli, err := d.client()
	if err != nil {
		return nil, plugin.NewRecoverableError(err)
	}
	created, err := cli.ContainerExecCreate(ctx, h.containerID, container.ExecOptions{
		Cmd:          req.Command,
		Tty:          req.TTY,
		AttachStdin:  req.Stdin != nil,
		AttachStdout: true,
		AttachStderr: true,
	})
	if err != nil {
		return nil, fmt.Errorf("exec: creating: %w", err)
	}
	hijacked, err := cli.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{Tty: req.TTY})
	if err != nil {
		return nil, fmt.Errorf("exec: attaching: %w", err)
	}
	defer hijacked.Close()

	stdout, stderr := req.Stdout, req.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}

	// Resizes: the first size may arrive before the process exists; the
	// engine accepts a resize once the exec started, so retry briefly.
	resizeDone := make(chan struct{})
	defer close(resizeDone)
	if req.TTY && req.Resize != nil {
		go func() {
			for {
				select {
				case <-resizeDone:
					return
				case sz, ok := <-req.Resize:
					if !ok {
						return
					}
					for i := 0; i < 20; i++ {
						err := cli.ContainerExecResize(ctx, created.ID, container.ResizeOptions{Height: uint(max(sz.Height, 0)), Width: uint(max(sz.Width, 0))})
						if err == nil || ctx.Err() != nil {
							break
						}
						time.Sleep(25 * time.Millisecond)
					}
				}
			}
		}()
	}

	if req.Stdin != nil {
		go func() {
			_, _ = io.Copy(hijacked.Conn, req.Stdin)
			if req.TTY {
				// The engine closes a tty exec's output as soon as its
				// stdin closes, losing what the command prints after; so
				// end the input the way a terminal does: ^D.
				_, _ = hijacked.Conn.Write([]byte{0x04})
				return
			}
			// End of the user's input: half-close so the command sees EOF.
			_ = hijacked.CloseWrite()
		}()
	}

	outDone := make(chan error, 1)
	go func() {
		var err error
		if req.TTY {
			_, err = io.Copy(stdout, hijacked.Reader)
		} else {
			_, err = stdcopy.StdCopy(stdout, stderr, hijacked.Reader)
		}
		outDone <- err
	}()
	select {
	case err := <-outDone:
		if err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
			d.logger.Debug("exec output ended with an error", "task_id", req.TaskID, "error", err)
		}
	case <-ctx.Done():
		hijacked.Close()
		return nil, fmt.Errorf("exec: %w", ctx.Err())
	}

	// Output ended; the engine may take a moment to record the exit.
	for {
		ins, err := cli.ContainerExecInspect(ctx, created.ID)
		if err != nil {
			return nil, fmt.Errorf("exec: inspecting: %w", err)
		}
		if !ins.Running {
			return &plugin.ExitResult{ExitCode: ins.ExitCode}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("exec: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
