package driver

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// loggerExecutableEnv, when set, names the binary to run as the log
// follower instead of this process's executable (tests that run the driver
// inside a test binary point it at a built plugin).
const loggerExecutableEnv = "BEDROCK_LOGGER_BIN"

// loggerProc is the plugin's view of a task's log follower.
type loggerProc struct {
	pid  int
	done chan struct{} // closed when the process is known to have exited
}

// loggerStatePath is where a container's follower keeps its position: in
// the task directory (not mounted into the container), per container so a
// restarted task starts fresh.
func loggerStatePath(allocDir, task, containerID string) string {
	return filepath.Join(allocDir, task, ".bedrock-logger-"+shortID(containerID)+".json")
}

// startLogger launches a detached follower for the task's container. The
// follower runs in its own session with no tie to our stdio, so it
// survives the plugin being killed.
func (d *Driver) startLogger(st *driverState) (*loggerProc, error) {
	exe := os.Getenv(loggerExecutableEnv)
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("log follower: finding our executable: %w", err)
		}
	}
	s := d.settings()
	args := []string{LoggerCommand,
		"-endpoint", s.endpoint,
		"-container", st.ContainerID,
		"-stdout", st.StdoutPath,
		"-stderr", st.StderrPath,
		"-state", st.LoggerState,
	}
	if s.tls != nil {
		args = append(args, "-tls-ca", s.tls.CAFile, "-tls-cert", s.tls.CertFile, "-tls-key", s.tls.KeyFile)
	}
	cmd := exec.Command(exe, args...)
	// Without the magic cookie the binary runs as the CLI, not a plugin.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, plugin.MagicCookieKey+"=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	// One OS thread is plenty for a line copier and keeps its footprint small.
	cmd.Env = append(cmd.Env, "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting log follower: %w", err)
	}
	lp := &loggerProc{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // reap it while we are its parent
		close(lp.done)
	}()
	return lp, nil
}

// adoptLogger returns the running follower pid for a container if it is
// still alive (after a plugin restart it is no longer our child).
func adoptLogger(pid int, containerID string) *loggerProc {
	if pid <= 0 || !isLoggerOf(pid, containerID) {
		// The recorded follower is gone, but a later one (started by a
		// plugin whose handle update Nomad never stored) may run.
		if pid = findLogger(containerID); pid == 0 {
			return nil
		}
	}
	lp := &loggerProc{pid: pid, done: make(chan struct{})}
	go func() {
		for isLoggerOf(pid, containerID) {
			time.Sleep(250 * time.Millisecond)
		}
		close(lp.done)
	}()
	return lp
}

// findLogger scans /proc for a live follower of the container.
func findLogger(containerID string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if isLoggerOf(pid, containerID) {
			return pid
		}
	}
	return 0
}

// isLoggerOf checks that pid is a live follower of this container, not a
// recycled pid.
func isLoggerOf(pid int, containerID string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		// A zombie has exited; its parent just has not reaped it yet.
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return false
		}
	}
	args := bytes.Split(b, []byte{0})
	hasCmd, hasID := false, false
	for _, a := range args {
		switch string(a) {
		case LoggerCommand:
			hasCmd = true
		case containerID:
			hasID = true
		}
	}
	return hasCmd && hasID
}

func (lp *loggerProc) waitExit(d time.Duration) bool {
	if lp == nil {
		return true
	}
	select {
	case <-lp.done:
		return true
	case <-time.After(d):
		return false
	}
}

// stop ends the follower: first it gets a moment to drain (it exits by
// itself once the container is gone), then SIGTERM, then SIGKILL.
func (lp *loggerProc) stop(grace time.Duration) {
	if lp == nil {
		return
	}
	if lp.waitExit(grace) {
		return
	}
	_ = syscall.Kill(lp.pid, syscall.SIGTERM)
	if lp.waitExit(2 * time.Second) {
		return
	}
	_ = syscall.Kill(lp.pid, syscall.SIGKILL)
	lp.waitExit(2 * time.Second)
}
