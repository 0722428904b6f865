// Package harness stands in for a Nomad client: it launches a driver plugin
// binary the way a client agent does (environment, handshake line, the three
// launches at agent start, re-attach after an agent restart, a new launch
// after a plugin crash), lays out allocation directories and log FIFOs like
// the client, and exposes every RPC. Tests and the demo use it because no
// Nomad binary is available; it is deliberately strict, failing on anything
// a real client would reject (stray stdout before the handshake, a wrong
// protocol version, non-JSON log lines, a schema hcldec cannot use).
package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/basepb"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// go-plugin's defaults, which the Nomad client does not override.
const (
	defaultMinPort   = 10000
	defaultMaxPort   = 25000
	handshakeTimeout = 30 * time.Second
)

// Options describe how the client launches the plugin.
type Options struct {
	// Binary is the plugin executable.
	Binary string
	// Env is added to the inherited environment (the client agent's).
	Env []string
	// Stderr, if set, receives a copy of every stderr line.
	Stderr io.Writer
}

// Plugin is one running plugin process with a connection to it.
type Plugin struct {
	Base   basepb.BasePluginClient
	Driver driverpb.DriverClient

	opts Options
	cmd  *exec.Cmd // nil when re-attached to a process we did not start
	pid  int
	addr string
	conn *grpc.ClientConn

	mu        sync.Mutex
	stderr    []string
	badStderr []string
	exited    chan struct{}
	waitErr   error
}

// Reattach is what a client persists to find a plugin again after its own
// restart.
type Reattach struct {
	Pid  int
	Addr string
}

// Launch starts the binary exactly as go-plugin does for Nomad and connects
// to it, failing unless the first stdout line is a valid handshake.
func Launch(ctx context.Context, opts Options) (*Plugin, error) {
	cmd := exec.Command(opts.Binary) //nolint:gosec // the binary under test
	cmd.Env = append(os.Environ(),
		plugin.MagicCookieKey+"="+plugin.MagicCookieValue,
		"PLUGIN_PROTOCOL_VERSIONS="+strconv.Itoa(plugin.ProtocolVersion),
		"PLUGIN_MIN_PORT="+strconv.Itoa(defaultMinPort),
		"PLUGIN_MAX_PORT="+strconv.Itoa(defaultMaxPort),
	)
	cmd.Env = append(cmd.Env, opts.Env...)
	// Its own process group, so the test's terminal signals don't reach it
	// and a kill hits only the plugin (its detached helpers survive, as
	// under Nomad).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("plugin stdout: %w", err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("plugin stderr: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting plugin %s: %w", opts.Binary, err)
	}
	p := &Plugin{opts: opts, cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go p.readStderr(stderr)

	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, err := r.ReadString('\n')
		if err == nil {
			lines <- line
		} else {
			close(lines)
		}
		// go-plugin moves the plugin's stdout to its stdio stream after the
		// handshake; anything still arriving here is drained and ignored.
		_, _ = io.Copy(io.Discard, r)
	}()
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	timer := time.NewTimer(handshakeTimeout)
	defer timer.Stop()
	var line string
	select {
	case l, ok := <-lines:
		if !ok {
			<-p.exited
			if p.waitErr == nil {
				p.waitErr = errors.New("exit status 0")
			}
			return nil, fmt.Errorf("plugin exited before its handshake (%w); stderr: %s", p.waitErr, p.stderrTail())
		}
		line = l
	case <-timer.C:
		p.kill()
		return nil, fmt.Errorf("plugin gave no handshake within %s", handshakeTimeout)
	case <-ctx.Done():
		p.kill()
		return nil, fmt.Errorf("waiting for handshake: %w", ctx.Err())
	}
	addr, err := ParseHandshake(line)
	if err != nil {
		p.kill()
		return nil, err
	}
	p.addr = addr
	if err := p.dial(); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// ParseHandshake checks a handshake line as go-plugin's client does, but
// strictly: core protocol 1, app protocol 2, gRPC, and no TLS certificate
// (Nomad does not use AutoMTLS). It returns the unix socket address.
func ParseHandshake(line string) (string, error) {
	line = strings.TrimSpace(line)
	parts := strings.Split(line, "|")
	if len(parts) < 5 {
		return "", fmt.Errorf("first stdout line is not a plugin handshake (something printed before it?): %q", line)
	}
	if parts[0] != "1" {
		return "", fmt.Errorf("handshake core protocol %q, want 1", parts[0])
	}
	if parts[1] != strconv.Itoa(plugin.ProtocolVersion) {
		return "", fmt.Errorf("handshake app protocol %q, want %d", parts[1], plugin.ProtocolVersion)
	}
	if parts[2] != "unix" && parts[2] != "tcp" {
		return "", fmt.Errorf("handshake network %q, want unix or tcp", parts[2])
	}
	if parts[4] != "grpc" {
		return "", fmt.Errorf("handshake protocol %q, Nomad only accepts grpc", parts[4])
	}
	if len(parts) > 5 && parts[5] != "" {
		return "", errors.New("handshake carries a TLS certificate, but Nomad does not use AutoMTLS")
	}
	if parts[2] == "unix" {
		return "unix:" + parts[3], nil
	}
	return parts[3], nil
}

func (p *Plugin) dial() error {
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to plugin at %s: %w", p.addr, err)
	}
	p.conn = conn
	p.Base = basepb.NewBasePluginClient(conn)
	p.Driver = driverpb.NewDriverClient(conn)
	return nil
}

func (p *Plugin) readStderr(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.stderr = append(p.stderr, line)
		if len(p.stderr) > 5000 {
			p.stderr = p.stderr[len(p.stderr)-5000:]
		}
		if !isJSONLogLine(line) {
			p.badStderr = append(p.badStderr, line)
		}
		p.mu.Unlock()
		if p.opts.Stderr != nil {
			_, _ = fmt.Fprintln(p.opts.Stderr, line)
		}
	}
}

func isJSONLogLine(l string) bool {
	l = strings.TrimSpace(l)
	return l == "" || (strings.HasPrefix(l, "{") && strings.HasSuffix(l, "}") && strings.Contains(l, `"@level"`))
}

// StderrLines returns the lines the plugin wrote to stderr so far.
func (p *Plugin) StderrLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.stderr...)
}

// CheckLogs fails if the plugin wrote anything but hclog JSON to stderr.
func (p *Plugin) CheckLogs() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.badStderr) > 0 {
		return fmt.Errorf("plugin wrote %d non-JSON stderr line(s), first: %q", len(p.badStderr), p.badStderr[0])
	}
	return nil
}

func (p *Plugin) stderrTail() string {
	lines := p.StderrLines()
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

// Pid is the plugin process id.
func (p *Plugin) Pid() int { return p.pid }

// Addr is where the plugin serves gRPC.
func (p *Plugin) Addr() string { return p.addr }

// Exited is closed when a plugin the harness started has exited.
func (p *Plugin) Exited() <-chan struct{} { return p.exited }

// Detach drops the connection without touching the process, as a client
// agent that crashes does, and returns what it needs to re-attach.
func (p *Plugin) Detach() Reattach {
	if p.conn != nil {
		_ = p.conn.Close()
	}
	return Reattach{Pid: p.pid, Addr: p.addr}
}

// ReattachTo connects to a plugin left running by a previous client, as a
// restarted agent does (no new launch, no SetConfig).
func ReattachTo(r Reattach) (*Plugin, error) {
	if err := syscall.Kill(r.Pid, 0); err != nil {
		return nil, fmt.Errorf("plugin process %d is gone: %w", r.Pid, err)
	}
	p := &Plugin{pid: r.Pid, addr: r.Addr, exited: make(chan struct{})}
	if err := p.dial(); err != nil {
		return nil, err
	}
	go func() {
		for syscall.Kill(r.Pid, 0) == nil {
			time.Sleep(100 * time.Millisecond)
		}
		close(p.exited)
	}()
	return p, nil
}

// Kill ends the plugin with SIGKILL, as a crash would.
func (p *Plugin) Kill() {
	p.kill()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

func (p *Plugin) kill() {
	if p.conn != nil {
		_ = p.conn.Close()
	}
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
}

// Close stops the plugin the way go-plugin's client does: ask the
// controller to shut down, wait up to two seconds, then kill.
func (p *Plugin) Close(ctx context.Context) {
	if p.conn != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_ = p.conn.Invoke(ctx, "/plugin.GRPCController/Shutdown", &emptypb.Empty{}, &emptypb.Empty{})
		cancel()
		select {
		case <-p.exited:
		case <-time.After(2 * time.Second):
		}
	}
	p.Kill()
}

// DialTimeoutCheck reports whether the plugin's socket accepts connections;
// useful to tell a hung plugin from a dead one.
func (p *Plugin) DialTimeoutCheck(d time.Duration) error {
	network, address := "tcp", p.addr
	if strings.HasPrefix(p.addr, "unix:") {
		network, address = "unix", strings.TrimPrefix(p.addr, "unix:")
	}
	c, err := net.DialTimeout(network, address, d)
	if err != nil {
		return fmt.Errorf("dial plugin: %w", err)
	}
	return c.Close()
}
