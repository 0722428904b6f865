package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// Port asks for one group network port, as `port "label" { to = N }`.
type Port struct {
	Label string
	// To is the port inside the task; 0 means the same as the host port.
	To int32
	// Value is the host port; 0 picks a free one on HostIP.
	Value int32
	// HostIP defaults to 127.0.0.1 (tests only talk to loopback).
	HostIP string
}

// TaskSpec is the part of a jobspec the client turns into a TaskConfig.
type TaskSpec struct {
	Job       string
	Group     string
	Task      string
	Namespace string
	// AllocID is generated when empty; tasks of one group share it.
	AllocID    string
	AllocIndex int
	// Config is the HCL body of the task's `config { ... }` block.
	Config string
	// Env is the task's `env { ... }` block.
	Env         map[string]string
	Ports       []Port
	CPU         int64 // MHz
	MemoryMB    int64
	MemoryMaxMB int64
	User        string
	Mounts      []plugin.Mount
	NodeName    string
	NodeID      string
}

// Task is a task the harness prepared and possibly started.
type Task struct {
	Spec   TaskSpec
	Config *driverpb.TaskConfig
	Handle *driverpb.TaskHandle
	Logs   *TaskLogs
}

// ID is the task's id on the wire.
func (t *Task) ID() string { return t.Config.GetId() }

// HostPort is the allocated host port of a label.
func (t *Task) HostPort(label string) int32 {
	for _, p := range t.Config.GetResources().GetPorts() {
		if p.GetLabel() == label {
			return p.GetValue()
		}
	}
	return 0
}

// AllocDir is the allocation directory on the host.
func (t *Task) AllocDir() string { return t.Config.GetAllocDir() }

// SharedDataDir is the allocation's alloc/data directory both tasks share.
func (t *Task) SharedDataDir() string { return filepath.Join(t.Config.GetAllocDir(), "alloc", "data") }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewAllocID returns a random allocation id in Nomad's UUID shape.
func NewAllocID() string {
	h := randomHex(16)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// FreePort returns a currently free TCP port on ip.
func FreePort(ip string) (int32, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port on %s: %w", ip, err)
	}
	defer func() { _ = l.Close() }()
	return int32(l.Addr().(*net.TCPAddr).Port), nil //nolint:gosec,forcetypeassert // a TCP listener's port fits
}

// PrepareTask lays out the allocation and task directories and log FIFOs
// under dataDir the way a Nomad client does, allocates ports, builds the
// task environment and encodes the config block with the plugin's schema.
func (c *Client) PrepareTask(dataDir string, s TaskSpec) (*Task, error) {
	if s.Namespace == "" {
		s.Namespace = "default"
	}
	if s.AllocID == "" {
		s.AllocID = NewAllocID()
	}
	if s.CPU == 0 {
		s.CPU = 100
	}
	if s.MemoryMB == 0 {
		s.MemoryMB = 64
	}
	if s.Job == "" || s.Group == "" || s.Task == "" {
		return nil, errors.New("a task needs job, group and task names")
	}
	allocDir := filepath.Join(dataDir, "alloc", s.AllocID)
	for _, d := range []string{
		"alloc/data", "alloc/logs", "alloc/tmp",
		s.Task + "/local", s.Task + "/secrets", s.Task + "/tmp", s.Task + "/private",
	} {
		if err := os.MkdirAll(filepath.Join(allocDir, d), 0o755); err != nil { //nolint:gosec // Nomad's layout is world-readable
			return nil, fmt.Errorf("alloc dir: %w", err)
		}
	}
	_ = os.Chmod(filepath.Join(allocDir, s.Task, "secrets"), 0o700)

	env := map[string]string{
		"NOMAD_ALLOC_DIR": "/alloc", "NOMAD_TASK_DIR": "/local", "NOMAD_SECRETS_DIR": "/secrets",
		"NOMAD_ALLOC_ID": s.AllocID, "NOMAD_SHORT_ALLOC_ID": s.AllocID[:8],
		"NOMAD_ALLOC_NAME":  fmt.Sprintf("%s.%s[%d]", s.Job, s.Group, s.AllocIndex),
		"NOMAD_ALLOC_INDEX": strconv.Itoa(s.AllocIndex), "NOMAD_GROUP_NAME": s.Group,
		"NOMAD_JOB_ID": s.Job, "NOMAD_JOB_NAME": s.Job, "NOMAD_NAMESPACE": s.Namespace,
		"NOMAD_REGION": "global", "NOMAD_DC": "dc1", "NOMAD_TASK_NAME": s.Task,
		"NOMAD_CPU_LIMIT": strconv.FormatInt(s.CPU, 10), "NOMAD_MEMORY_LIMIT": strconv.FormatInt(s.MemoryMB, 10),
		"NOMAD_PARENT_CGROUP": "nomad.slice", "NOMAD_CPU_CORES": " ",
	}
	var ports []*driverpb.PortMapping
	for _, p := range s.Ports {
		if p.HostIP == "" {
			p.HostIP = "127.0.0.1"
		}
		if p.Value == 0 {
			v, err := FreePort(p.HostIP)
			if err != nil {
				return nil, err
			}
			p.Value = v
		}
		inside := p.Value
		if p.To > 0 {
			inside = p.To
		}
		hostAddr := net.JoinHostPort(p.HostIP, strconv.Itoa(int(p.Value)))
		env["NOMAD_ADDR_"+p.Label] = hostAddr
		env["NOMAD_HOST_ADDR_"+p.Label] = hostAddr
		env["NOMAD_IP_"+p.Label] = p.HostIP
		env["NOMAD_HOST_IP_"+p.Label] = p.HostIP
		env["NOMAD_HOST_PORT_"+p.Label] = strconv.Itoa(int(p.Value))
		env["NOMAD_PORT_"+p.Label] = strconv.Itoa(int(inside))
		env["NOMAD_ALLOC_PORT_"+p.Label] = strconv.Itoa(int(inside))
		ports = append(ports, &driverpb.PortMapping{Label: p.Label, Value: p.Value, To: p.To, HostIp: p.HostIP})
	}
	for k, v := range s.Env {
		env[k] = v
	}
	cfgBytes, err := EncodeHCL(c.TaskSpec, "task config", s.Config, env)
	if err != nil {
		return nil, err
	}
	logs, err := openTaskLogs(allocDir, s.Task)
	if err != nil {
		return nil, err
	}
	tc := &driverpb.TaskConfig{
		Id:                  s.AllocID + "/" + s.Task + "/" + randomHex(4),
		Name:                s.Task,
		MsgpackDriverConfig: cfgBytes,
		Env:                 env,
		Resources: &driverpb.Resources{
			AllocatedResources: &driverpb.AllocatedResources{
				Cpu:    &driverpb.AllocatedCPU{CpuShares: s.CPU},
				Memory: &driverpb.AllocatedMemory{MemoryMb: s.MemoryMB, MemoryMaxMb: s.MemoryMaxMB},
			},
			LinuxResources: &driverpb.LinuxResources{
				CpuShares:        s.CPU,
				MemoryLimitBytes: s.MemoryMB * 1024 * 1024,
				PercentTicks:     float64(s.CPU) / 20000,
				// The shape a cgroup v1 client sends; drivers must not rely on it.
				CpusetCgroup: "/sys/fs/cgroup/cpuset/nomad/share",
			},
			Ports: ports,
		},
		User:          s.User,
		AllocDir:      allocDir,
		StdoutPath:    logs.StdoutFIFO,
		StderrPath:    logs.StderrFIFO,
		TaskGroupName: s.Group,
		JobName:       s.Job,
		JobId:         s.Job,
		Namespace:     s.Namespace,
		AllocId:       s.AllocID,
		NodeName:      s.NodeName,
		NodeId:        s.NodeID,
	}
	for _, m := range s.Mounts {
		tc.Mounts = append(tc.Mounts, &driverpb.Mount{TaskPath: m.TaskPath, HostPath: m.HostPath, Readonly: m.Readonly})
	}
	return &Task{Spec: s, Config: tc, Logs: logs}, nil
}

// StartTask starts a prepared task and keeps its handle, decoding errors
// the way the client does (a *plugin.RecoverableError when marked).
func (c *Client) StartTask(ctx context.Context, t *Task) error {
	resp, err := c.Plugin.Driver.StartTask(ctx, &driverpb.StartTaskRequest{Task: t.Config})
	if err != nil {
		return plugin.FromStatus(err)
	}
	if resp.GetResult() != driverpb.StartTaskResponse_SUCCESS {
		return fmt.Errorf("start task: %v: %s", resp.GetResult(), resp.GetDriverErrorMsg())
	}
	if resp.GetHandle() == nil {
		return errors.New("start task succeeded without a handle")
	}
	if resp.GetHandle().GetVersion() == 0 {
		return errors.New("task handle version 0 is reserved by Nomad")
	}
	t.Handle = resp.GetHandle()
	return nil
}

// RecoverTask sends the stored handle back as the client does after an
// agent restart or a plugin crash: the recorded Nomad 2.0.5 client sends the
// handle's config without msgpack_driver_config in both cases.
func (c *Client) RecoverTask(ctx context.Context, t *Task) error {
	if t.Handle == nil {
		return errors.New("task has no handle to recover")
	}
	h := proto.Clone(t.Handle).(*driverpb.TaskHandle) //nolint:forcetypeassert // Clone keeps the type
	h.Config.MsgpackDriverConfig = nil
	_, err := c.Plugin.Driver.RecoverTask(ctx, &driverpb.RecoverTaskRequest{TaskId: t.ID(), Handle: h})
	return plugin.FromStatus(err)
}

// WaitTask blocks until the task exits or ctx ends.
func (c *Client) WaitTask(ctx context.Context, t *Task) (*plugin.ExitResult, error) {
	resp, err := c.Plugin.Driver.WaitTask(ctx, &driverpb.WaitTaskRequest{TaskId: t.ID()})
	if err != nil {
		return nil, plugin.FromStatus(err)
	}
	return plugin.ExitResultFromProto(resp.GetResult(), resp.GetErr()), nil
}

// StopTask asks the plugin to stop the task with the job's kill signal and
// kill_timeout.
func (c *Client) StopTask(ctx context.Context, t *Task, timeout time.Duration, signal string) error {
	_, err := c.Plugin.Driver.StopTask(ctx, &driverpb.StopTaskRequest{TaskId: t.ID(), Timeout: durationpb.New(timeout), Signal: signal})
	return plugin.FromStatus(err)
}

// DestroyTask removes the task; the client always forces it on stop.
func (c *Client) DestroyTask(ctx context.Context, t *Task, force bool) error {
	_, err := c.Plugin.Driver.DestroyTask(ctx, &driverpb.DestroyTaskRequest{TaskId: t.ID(), Force: force})
	return plugin.FromStatus(err)
}

// SignalTask sends a signal by name, e.g. "SIGUSR1".
func (c *Client) SignalTask(ctx context.Context, t *Task, sig string) error {
	_, err := c.Plugin.Driver.SignalTask(ctx, &driverpb.SignalTaskRequest{TaskId: t.ID(), Signal: sig})
	return plugin.FromStatus(err)
}

// InspectTask returns the plugin's view of a task.
func (c *Client) InspectTask(ctx context.Context, t *Task) (*driverpb.InspectTaskResponse, error) {
	resp, err := c.Plugin.Driver.InspectTask(ctx, &driverpb.InspectTaskRequest{TaskId: t.ID()})
	return resp, plugin.FromStatus(err)
}

// ExecTask runs a command to completion and returns its output.
func (c *Client) ExecTask(ctx context.Context, t *Task, timeout time.Duration, cmd ...string) (*driverpb.ExecTaskResponse, error) {
	resp, err := c.Plugin.Driver.ExecTask(ctx, &driverpb.ExecTaskRequest{TaskId: t.ID(), Command: cmd, Timeout: durationpb.New(timeout)})
	return resp, plugin.FromStatus(err)
}

// TaskStats opens the stats stream at the given interval.
func (c *Client) TaskStats(ctx context.Context, t *Task, interval time.Duration) (driverpb.Driver_TaskStatsClient, error) {
	return c.Plugin.Driver.TaskStats(ctx, &driverpb.TaskStatsRequest{TaskId: t.ID(), CollectionInterval: durationpb.New(interval)})
}

// Fingerprint opens the fingerprint stream.
func (c *Client) Fingerprint(ctx context.Context) (driverpb.Driver_FingerprintClient, error) {
	return c.Plugin.Driver.Fingerprint(ctx, &driverpb.FingerprintRequest{})
}

// TaskEvents opens the task event stream.
func (c *Client) TaskEvents(ctx context.Context) (driverpb.Driver_TaskEventsClient, error) {
	return c.Plugin.Driver.TaskEvents(ctx, &driverpb.TaskEventsRequest{})
}

// StopAndDestroy stops a task as `nomad job stop` does and destroys it.
func (c *Client) StopAndDestroy(ctx context.Context, t *Task, timeout time.Duration, signal string) error {
	if err := c.StopTask(ctx, t, timeout, signal); err != nil && !strings.Contains(err.Error(), "not found") {
		return err
	}
	return c.DestroyTask(ctx, t, true)
}
