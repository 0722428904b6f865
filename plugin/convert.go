package plugin

import (
	"errors"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/structspb"
)

// TaskConfigFromProto turns the wire task config into ours.
func TaskConfigFromProto(p *driverpb.TaskConfig) *TaskConfig {
	if p == nil {
		return nil
	}
	c := &TaskConfig{
		ID:           p.GetId(),
		Name:         p.GetName(),
		DriverConfig: p.GetMsgpackDriverConfig(),
		Env:          p.GetEnv(),
		DeviceEnv:    p.GetDeviceEnv(),
		User:         p.GetUser(),
		AllocDir:     p.GetAllocDir(),
		StdoutPath:   p.GetStdoutPath(),
		StderrPath:   p.GetStderrPath(),
		Group:        p.GetTaskGroupName(),
		JobName:      p.GetJobName(),
		JobID:        p.GetJobId(),
		ParentJobID:  p.GetParentJobId(),
		Namespace:    p.GetNamespace(),
		AllocID:      p.GetAllocId(),
		NodeName:     p.GetNodeName(),
		NodeID:       p.GetNodeId(),
	}
	if r := p.GetResources(); r != nil {
		res := &Resources{
			CPUShares:   r.GetAllocatedResources().GetCpu().GetCpuShares(),
			MemoryMB:    r.GetAllocatedResources().GetMemory().GetMemoryMb(),
			MemoryMaxMB: r.GetAllocatedResources().GetMemory().GetMemoryMaxMb(),
		}
		for _, n := range r.GetAllocatedResources().GetNetworks() {
			res.Networks = append(res.Networks, NetworkResource{
				Device: n.GetDevice(), CIDR: n.GetCidr(), IP: n.GetIp(), MBits: n.GetMbits(),
				ReservedPorts: portsFromProto(n.GetReservedPorts()),
				DynamicPorts:  portsFromProto(n.GetDynamicPorts()),
			})
		}
		if l := r.GetLinuxResources(); l != nil {
			res.Linux = LinuxResources{
				CPUPeriod: l.GetCpuPeriod(), CPUQuota: l.GetCpuQuota(), CPUShares: l.GetCpuShares(),
				MemoryLimitBytes: l.GetMemoryLimitBytes(), OOMScoreAdj: l.GetOomScoreAdj(),
				CpusetCpus: l.GetCpusetCpus(), CpusetCgroup: l.GetCpusetCgroup(), PercentTicks: l.GetPercentTicks(),
			}
		}
		for _, pm := range r.GetPorts() {
			res.Ports = append(res.Ports, PortMapping{Label: pm.GetLabel(), Value: pm.GetValue(), To: pm.GetTo(), HostIP: pm.GetHostIp()})
		}
		c.Resources = res
	}
	for _, m := range p.GetMounts() {
		c.Mounts = append(c.Mounts, Mount{
			TaskPath: m.GetTaskPath(), HostPath: m.GetHostPath(), Readonly: m.GetReadonly(),
			PropagationMode: m.GetPropagationMode(), SELinuxLabel: m.GetSelinuxLabel(),
		})
	}
	for _, d := range p.GetDevices() {
		c.Devices = append(c.Devices, Device{TaskPath: d.GetTaskPath(), HostPath: d.GetHostPath(), CgroupPermissions: d.GetCgroupPermissions()})
	}
	if n := p.GetNetworkIsolationSpec(); n != nil {
		c.Network = &NetworkIsolation{
			Mode: NetworkMode(n.GetMode()), Path: n.GetPath(), Labels: n.GetLabels(),
			Hostname: n.GetHostsConfig().GetHostname(), Address: n.GetHostsConfig().GetAddress(),
		}
	}
	if d := p.GetDns(); d != nil {
		c.DNS = &DNSConfig{Servers: d.GetServers(), Searches: d.GetSearches(), Options: d.GetOptions()}
	}
	return c
}

func portsFromProto(ps []*driverpb.NetworkPort) []NetworkPort {
	var out []NetworkPort
	for _, p := range ps {
		out = append(out, NetworkPort{Label: p.GetLabel(), Value: p.GetValue()})
	}
	return out
}

func portsToProto(ps []NetworkPort) []*driverpb.NetworkPort {
	var out []*driverpb.NetworkPort
	for _, p := range ps {
		out = append(out, &driverpb.NetworkPort{Label: p.Label, Value: p.Value})
	}
	return out
}

// TaskConfigToProto turns our task config into the wire form.
func TaskConfigToProto(c *TaskConfig) *driverpb.TaskConfig {
	if c == nil {
		return nil
	}
	p := &driverpb.TaskConfig{
		Id: c.ID, Name: c.Name, MsgpackDriverConfig: c.DriverConfig, Env: c.Env, DeviceEnv: c.DeviceEnv,
		User: c.User, AllocDir: c.AllocDir, StdoutPath: c.StdoutPath, StderrPath: c.StderrPath,
		TaskGroupName: c.Group, JobName: c.JobName, JobId: c.JobID, ParentJobId: c.ParentJobID,
		Namespace: c.Namespace, AllocId: c.AllocID, NodeName: c.NodeName, NodeId: c.NodeID,
	}
	if r := c.Resources; r != nil {
		pr := &driverpb.Resources{
			AllocatedResources: &driverpb.AllocatedResources{
				Cpu:    &driverpb.AllocatedCPU{CpuShares: r.CPUShares},
				Memory: &driverpb.AllocatedMemory{MemoryMb: r.MemoryMB, MemoryMaxMb: r.MemoryMaxMB},
			},
			LinuxResources: &driverpb.LinuxResources{
				CpuPeriod: r.Linux.CPUPeriod, CpuQuota: r.Linux.CPUQuota, CpuShares: r.Linux.CPUShares,
				MemoryLimitBytes: r.Linux.MemoryLimitBytes, OomScoreAdj: r.Linux.OOMScoreAdj,
				CpusetCpus: r.Linux.CpusetCpus, CpusetCgroup: r.Linux.CpusetCgroup, PercentTicks: r.Linux.PercentTicks,
			},
		}
		for _, n := range r.Networks {
			pr.AllocatedResources.Networks = append(pr.AllocatedResources.Networks, &driverpb.NetworkResource{
				Device: n.Device, Cidr: n.CIDR, Ip: n.IP, Mbits: n.MBits,
				ReservedPorts: portsToProto(n.ReservedPorts), DynamicPorts: portsToProto(n.DynamicPorts),
			})
		}
		for _, pm := range r.Ports {
			pr.Ports = append(pr.Ports, &driverpb.PortMapping{Label: pm.Label, Value: pm.Value, To: pm.To, HostIp: pm.HostIP})
		}
		p.Resources = pr
	}
	for _, m := range c.Mounts {
		p.Mounts = append(p.Mounts, &driverpb.Mount{TaskPath: m.TaskPath, HostPath: m.HostPath, Readonly: m.Readonly, PropagationMode: m.PropagationMode, SelinuxLabel: m.SELinuxLabel})
	}
	for _, d := range c.Devices {
		p.Devices = append(p.Devices, &driverpb.Device{TaskPath: d.TaskPath, HostPath: d.HostPath, CgroupPermissions: d.CgroupPermissions})
	}
	if n := c.Network; n != nil {
		p.NetworkIsolationSpec = &driverpb.NetworkIsolation{
			Mode: driverpb.NetworkIsolation_Mode(n.Mode), Path: n.Path, Labels: n.Labels,
			HostsConfig: &driverpb.HostsConfig{Hostname: n.Hostname, Address: n.Address},
		}
	}
	if d := c.DNS; d != nil {
		p.Dns = &driverpb.DNSConfig{Servers: d.Servers, Searches: d.Searches, Options: d.Options}
	}
	return p
}

// TaskHandleFromProto turns the wire handle into ours.
func TaskHandleFromProto(p *driverpb.TaskHandle) *TaskHandle {
	if p == nil {
		return nil
	}
	return &TaskHandle{Version: p.GetVersion(), Config: TaskConfigFromProto(p.GetConfig()), State: TaskState(p.GetState()), DriverState: p.GetDriverState()}
}

// TaskHandleToProto turns our handle into the wire form.
func TaskHandleToProto(h *TaskHandle) *driverpb.TaskHandle {
	if h == nil {
		return nil
	}
	return &driverpb.TaskHandle{Version: h.Version, Config: TaskConfigToProto(h.Config), State: driverpb.TaskState(h.State), DriverState: h.DriverState}
}

// ExitResultToProto turns our exit result into the wire form.
func ExitResultToProto(r *ExitResult) *driverpb.ExitResult {
	if r == nil {
		return nil
	}
	return &driverpb.ExitResult{ExitCode: int32(r.ExitCode), Signal: int32(r.Signal), OomKilled: r.OOMKilled} //nolint:gosec // exit codes and signals fit in int32
}

// ExitResultFromProto turns the wire exit result into ours.
func ExitResultFromProto(p *driverpb.ExitResult, errMsg string) *ExitResult {
	r := &ExitResult{ExitCode: int(p.GetExitCode()), Signal: int(p.GetSignal()), OOMKilled: p.GetOomKilled()}
	if errMsg != "" {
		r.Err = errors.New(errMsg)
	}
	return r
}

// NetworkOverrideToProto turns our override into the wire form.
func NetworkOverrideToProto(n *NetworkOverride) *driverpb.NetworkOverride {
	if n == nil {
		return nil
	}
	return &driverpb.NetworkOverride{PortMap: n.PortMap, Addr: n.Addr, AutoAdvertise: n.AutoAdvertise}
}

// FingerprintToProto turns our fingerprint into the wire form.
func FingerprintToProto(f *Fingerprint) *driverpb.FingerprintResponse {
	out := &driverpb.FingerprintResponse{
		Attributes:        map[string]*structspb.Attribute{},
		Health:            driverpb.FingerprintResponse_Health(f.Health),
		HealthDescription: f.Description,
	}
	for k, a := range f.Attributes {
		pa := &structspb.Attribute{Unit: a.Unit}
		switch a.Kind {
		case AttrInt:
			pa.Value = &structspb.Attribute_IntVal{IntVal: a.Int}
		case AttrFloat:
			pa.Value = &structspb.Attribute_FloatVal{FloatVal: a.Float}
		case AttrBool:
			pa.Value = &structspb.Attribute_BoolVal{BoolVal: a.Bool}
		default:
			pa.Value = &structspb.Attribute_StringVal{StringVal: a.String}
		}
		out.Attributes[k] = pa
	}
	return out
}

// TaskEventToProto turns our event into the wire form.
func TaskEventToProto(e *TaskEvent) *driverpb.TaskEvent {
	return &driverpb.TaskEvent{
		TaskId: e.TaskID, AllocId: e.AllocID, TaskName: e.TaskName,
		Timestamp: timestamppb.New(e.Timestamp), Message: e.Message, Annotations: e.Annotations,
	}
}

// Names of the measured fields as Nomad's Go structs spell them; the wire
// carries their index.
var (
	cpuFieldNames = []string{"System Mode", "User Mode", "Total Ticks", "Throttled Periods", "Throttled Time", "Percent"}
	memFieldNames = []string{"RSS", "Cache", "Max Usage", "Kernel Usage", "Kernel Max Usage", "Usage", "Swap"}
)

func indexOf(names []string, s string) int {
	for i, n := range names {
		if n == s {
			return i
		}
	}
	return -1
}

func usageToProto(cpu CPUUsage, mem MemoryUsage) *driverpb.ResourceUsage {
	pc := &driverpb.CPUUsage{
		SystemMode: cpu.SystemMode, UserMode: cpu.UserMode, TotalTicks: cpu.TotalTicks,
		ThrottledPeriods: cpu.ThrottledPeriods, ThrottledTime: cpu.ThrottledTime, Percent: cpu.Percent,
	}
	for _, f := range cpu.Measured {
		if i := indexOf(cpuFieldNames, f); i >= 0 {
			pc.MeasuredFields = append(pc.MeasuredFields, driverpb.CPUUsage_Field(i)) //nolint:gosec // small index
		}
	}
	pm := &driverpb.MemoryUsage{
		Rss: mem.RSS, Cache: mem.Cache, MaxUsage: mem.MaxUsage, KernelUsage: mem.KernelUsage,
		KernelMaxUsage: mem.KernelMaxUsage, Usage: mem.Usage, Swap: mem.Swap,
	}
	for _, f := range mem.Measured {
		if i := indexOf(memFieldNames, f); i >= 0 {
			pm.MeasuredFields = append(pm.MeasuredFields, driverpb.MemoryUsage_Field(i)) //nolint:gosec // small index
		}
	}
	return &driverpb.ResourceUsage{Cpu: pc, Memory: pm}
}

// TaskUsageToProto turns a usage sample into the wire form.
func TaskUsageToProto(taskID string, u *TaskUsage) *driverpb.TaskStats {
	ts := u.Timestamp
	if ts.IsZero() {
		ts = time.Now()
	}
	out := &driverpb.TaskStats{
		Id:               taskID,
		Timestamp:        timestamppb.New(ts),
		AggResourceUsage: usageToProto(u.CPU, u.Memory),
	}
	if len(u.ByPID) > 0 {
		out.ResourceUsageByPid = map[string]*driverpb.ResourceUsage{}
		for pid, cm := range u.ByPID {
			out.ResourceUsageByPid[pid] = usageToProto(cm.CPU, cm.Memory)
		}
	}
	return out
}

// CapabilitiesToProto turns our capabilities into the wire form.
func CapabilitiesToProto(c *Capabilities) *driverpb.Capabilities {
	out := &driverpb.Capabilities{
		SendSignals: c.SendSignals, Exec: c.Exec,
		FsIsolation:          driverpb.Capabilities_FSIsolation(c.FSIsolation),
		MustCreateNetwork:    c.MustCreateNetwork,
		RemoteTasks:          c.RemoteTasks,
		DisableLogCollection: c.DisableLogCollection,
	}
	if c.NoMounts {
		out.MountConfigs = driverpb.Capabilities_NO_MOUNTS
	}
	for _, m := range c.NetworkModes {
		out.NetworkIsolationModes = append(out.NetworkIsolationModes, driverpb.NetworkIsolation_Mode(m))
	}
	return out
}
