// Package plugin speaks Nomad's task-driver plugin protocol (go-plugin v2 over
// gRPC) so that driver code can be written against plain Go types. The
// protobuf definitions in proto/ are our own, written from the protocol's
// facts; this package is the only one that touches them on the plugin side.
package plugin

import (
	"context"
	"io"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/hclspecpb"
)

// Driver is what a task driver implements. Every method receives a context
// bounded by the gRPC call (or, for streams, by the stream's life), so long
// operations must watch it. Errors that the Nomad client may retry should be
// wrapped with NewRecoverableError; everything else is final.
type Driver interface {
	// Info identifies the plugin; it must not depend on configuration,
	// because Nomad asks before SetConfig.
	Info() Info
	// ConfigSchema describes the agent's `plugin "..." { config {} }` block.
	ConfigSchema() *hclspecpb.Spec
	// SetConfig applies the plugin block. Called on validation launches
	// (Agent is nil) and on the long-lived launch (Agent is set).
	SetConfig(ctx context.Context, cfg *PluginConfig) error
	// TaskConfigSchema describes the job's task `config {}` block.
	TaskConfigSchema() *hclspecpb.Spec
	// Capabilities tells Nomad which optional RPCs and modes are supported.
	Capabilities() *Capabilities
	// Init runs once configuration is set on the long-lived launch and again
	// after a client agent re-attaches; it must be idempotent.
	Init(ctx context.Context) error
	// Shutdown is a best-effort notice that the client is stopping the plugin.
	Shutdown(ctx context.Context) error

	// Fingerprint streams the driver's health and node attributes. The first
	// value must come promptly; the channel stays open until ctx ends.
	Fingerprint(ctx context.Context) (<-chan *Fingerprint, error)
	// TaskEvents streams events shown in the task's event list until ctx ends.
	TaskEvents(ctx context.Context) (<-chan *TaskEvent, error)

	StartTask(ctx context.Context, cfg *TaskConfig) (*TaskHandle, *NetworkOverride, error)
	// RecoverTask re-attaches to a task from its handle; the handle's
	// DriverConfig may be empty (after a client agent restart).
	RecoverTask(ctx context.Context, handle *TaskHandle) error
	// WaitTask delivers one ExitResult when the task exits, then closes.
	WaitTask(ctx context.Context, taskID string) (<-chan *ExitResult, error)
	StopTask(ctx context.Context, taskID string, timeout time.Duration, signal string) error
	DestroyTask(ctx context.Context, taskID string, force bool) error
	InspectTask(ctx context.Context, taskID string) (*TaskStatus, error)
	// TaskStats streams usage every interval until ctx ends or the task is gone.
	TaskStats(ctx context.Context, taskID string, interval time.Duration) (<-chan *TaskUsage, error)
	SignalTask(ctx context.Context, taskID string, signal string) error
	ExecTask(ctx context.Context, taskID string, cmd []string, timeout time.Duration) (*ExecResult, error)
	// ExecTaskStreaming runs an interactive command; it returns when the
	// command exits, after all of its output has been written.
	ExecTaskStreaming(ctx context.Context, req *ExecRequest) (*ExitResult, error)
}

// Info identifies a plugin to the Nomad client.
type Info struct {
	Name    string
	Version string // semver of this plugin, independent of Nomad's
}

// PluginConfig is the agent's plugin block plus what the client adds.
type PluginConfig struct {
	// Msgpack is the plugin block as msgpack of a cty value; decode with
	// DecodeConfig.
	Msgpack []byte
	// Agent is nil on the client's validation launches.
	Agent      *AgentConfig
	APIVersion string
}

// AgentConfig is what the client tells drivers about itself.
type AgentConfig struct {
	ClientMinPort uint32
	ClientMaxPort uint32
}

// FSIsolation is how a task's filesystem is separated from the host.
type FSIsolation int

// Filesystem isolation kinds, with the wire values.
const (
	FSIsolationNone   FSIsolation = 0
	FSIsolationChroot FSIsolation = 1
	FSIsolationImage  FSIsolation = 2
)

// NetworkMode is where a task's network namespace comes from.
type NetworkMode int

// Network isolation modes, with the wire values.
const (
	NetworkModeHost  NetworkMode = 0
	NetworkModeGroup NetworkMode = 1
	NetworkModeTask  NetworkMode = 2
	NetworkModeNone  NetworkMode = 3
)

// Capabilities tells Nomad what the driver supports.
type Capabilities struct {
	SendSignals          bool
	Exec                 bool
	FSIsolation          FSIsolation
	NetworkModes         []NetworkMode
	MustCreateNetwork    bool
	NoMounts             bool
	RemoteTasks          bool
	DisableLogCollection bool
}

// Health of a driver on its node.
type Health int

// Health states, with the wire values.
const (
	HealthUndetected Health = 0
	HealthUnhealthy  Health = 1
	HealthHealthy    Health = 2
)

// String names the state as Nomad's UI does.
func (h Health) String() string {
	switch h {
	case HealthHealthy:
		return "healthy"
	case HealthUnhealthy:
		return "unhealthy"
	default:
		return "undetected"
	}
}

// Fingerprint is one health report with node attributes.
type Fingerprint struct {
	Attributes  map[string]Attribute
	Health      Health
	Description string
}

// Attribute is a typed node attribute. Exactly one of the value fields is
// meaningful, chosen by Kind.
type Attribute struct {
	Kind   AttributeKind
	String string
	Int    int64
	Float  float64
	Bool   bool
	Unit   string
}

// AttributeKind selects the value of an Attribute.
type AttributeKind int

// Attribute kinds.
const (
	AttrString AttributeKind = iota
	AttrInt
	AttrFloat
	AttrBool
)

// StringAttr makes a string attribute.
func StringAttr(s string) Attribute { return Attribute{Kind: AttrString, String: s} }

// IntAttr makes an integer attribute.
func IntAttr(i int64) Attribute { return Attribute{Kind: AttrInt, Int: i} }

// BoolAttr makes a boolean attribute.
func BoolAttr(b bool) Attribute { return Attribute{Kind: AttrBool, Bool: b} }

// TaskEvent is shown in the task's event list in the Nomad UI.
type TaskEvent struct {
	TaskID      string
	AllocID     string
	TaskName    string
	Timestamp   time.Time
	Message     string
	Annotations map[string]string
}

// TaskConfig is everything the client tells a driver about a task.
type TaskConfig struct {
	ID   string
	Name string
	// DriverConfig is the job's task config block as msgpack of a cty value.
	DriverConfig []byte
	Env          map[string]string
	DeviceEnv    map[string]string
	Resources    *Resources
	Mounts       []Mount
	Devices      []Device
	User         string
	AllocDir     string
	StdoutPath   string
	StderrPath   string
	Group        string
	JobName      string
	JobID        string
	ParentJobID  string
	Namespace    string
	AllocID      string
	NodeName     string
	NodeID       string
	Network      *NetworkIsolation
	DNS          *DNSConfig
}

// Resources are what the scheduler allocated to the task.
type Resources struct {
	CPUShares   int64
	MemoryMB    int64
	MemoryMaxMB int64
	Networks    []NetworkResource
	Linux       LinuxResources
	Ports       []PortMapping
}

// LinuxResources are the cgroup values the client computed.
type LinuxResources struct {
	CPUPeriod        int64
	CPUQuota         int64
	CPUShares        int64
	MemoryLimitBytes int64
	OOMScoreAdj      int64
	CpusetCpus       string
	CpusetCgroup     string
	PercentTicks     float64
}

// NetworkResource is a legacy task-level network.
type NetworkResource struct {
	Device        string
	CIDR          string
	IP            string
	MBits         int32
	ReservedPorts []NetworkPort
	DynamicPorts  []NetworkPort
}

// NetworkPort is a labelled port of a NetworkResource.
type NetworkPort struct {
	Label string
	Value int32
}

// PortMapping is one allocated group port.
type PortMapping struct {
	Label  string
	Value  int32 // host port
	To     int32 // port inside the task, 0 = same as Value
	HostIP string
}

// Mount is a host path bound into the task.
type Mount struct {
	TaskPath        string
	HostPath        string
	Readonly        bool
	PropagationMode string
	SELinuxLabel    string
}

// Device is a host device exposed to the task.
type Device struct {
	TaskPath          string
	HostPath          string
	CgroupPermissions string
}

// NetworkIsolation points at a network namespace made by the client.
type NetworkIsolation struct {
	Mode     NetworkMode
	Path     string
	Labels   map[string]string
	Hostname string
	Address  string
}

// DNSConfig is the task's resolver configuration.
type DNSConfig struct {
	Servers  []string
	Searches []string
	Options  []string
}

// TaskState is the execution state recorded in a handle.
type TaskState int

// Task states, with the wire values.
const (
	TaskStateUnknown TaskState = 0
	TaskStateRunning TaskState = 1
	TaskStateExited  TaskState = 2
)

// TaskHandle is what the client stores to recover a task later. DriverState
// must hold everything needed to re-attach, because Config.DriverConfig is
// empty after a client agent restart.
type TaskHandle struct {
	Version     int32
	Config      *TaskConfig
	State       TaskState
	DriverState []byte
}

// NetworkOverride tells the client about addresses the driver chose.
type NetworkOverride struct {
	PortMap       map[string]int32
	Addr          string
	AutoAdvertise bool
}

// ExitResult is how a task or exec ended. Err is a driver error while
// waiting, distinct from the task's own failure.
type ExitResult struct {
	ExitCode  int
	Signal    int
	OOMKilled bool
	Err       error
}

// Successful reports a clean exit.
func (r *ExitResult) Successful() bool {
	return r.ExitCode == 0 && r.Signal == 0 && r.Err == nil
}

// TaskStatus answers InspectTask.
type TaskStatus struct {
	ID          string
	Name        string
	State       TaskState
	StartedAt   time.Time
	CompletedAt time.Time
	Result      *ExitResult
	Attributes  map[string]string
	Network     *NetworkOverride
}

// TaskUsage is one resource-usage sample.
type TaskUsage struct {
	Timestamp time.Time
	CPU       CPUUsage
	Memory    MemoryUsage
	ByPID     map[string]CPUMemory
}

// CPUMemory is a per-process sample.
type CPUMemory struct {
	CPU    CPUUsage
	Memory MemoryUsage
}

// CPUUsage is CPU time and percentage; Measured names the fields really set
// ("System Mode", "User Mode", "Total Ticks", "Throttled Periods",
// "Throttled Time", "Percent").
type CPUUsage struct {
	SystemMode       float64
	UserMode         float64
	TotalTicks       float64
	ThrottledPeriods uint64
	ThrottledTime    uint64
	Percent          float64
	Measured         []string
}

// MemoryUsage is memory in bytes; Measured names the fields really set
// ("RSS", "Cache", "Max Usage", "Kernel Usage", "Kernel Max Usage", "Usage",
// "Swap").
type MemoryUsage struct {
	RSS            uint64
	Cache          uint64
	MaxUsage       uint64
	KernelUsage    uint64
	KernelMaxUsage uint64
	Usage          uint64
	Swap           uint64
	Measured       []string
}

// ExecResult is the outcome of a non-interactive exec.
type ExecResult struct {
	Stdout []byte
	Stderr []byte
	Exit   ExitResult
}

// TermSize is a terminal size in characters.
type TermSize struct {
	Height int
	Width  int
}

// ExecRequest is an interactive exec: Stdin ends with io.EOF when the user
// closes it; Resize delivers terminal size changes (tty only).
type ExecRequest struct {
	TaskID  string
	Command []string
	TTY     bool
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	Resize  <-chan TermSize
}
