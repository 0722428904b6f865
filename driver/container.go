package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	"github.com/docker/go-units"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// Labels put on every container so a plugin that lost its state (or a
// later one) can find and reconcile them.
const (
	labelPrefix    = "com.bedrock-nomad."
	labelManaged   = labelPrefix + "managed"
	labelAllocID   = labelPrefix + "alloc_id"
	labelTask      = labelPrefix + "task"
	labelTaskID    = labelPrefix + "task_id"
	labelJob       = labelPrefix + "job"
	labelGroup     = labelPrefix + "group"
	labelNamespace = labelPrefix + "namespace"
	labelNode      = labelPrefix + "node_id"
	// labelCapture marks a syncer container in a capture mode (its value
	// is the mode): removing it leaves mounts on the host to undo.
	labelCapture = labelPrefix + "capture"
)

// Paths inside the container, as Nomad's docker driver lays them out (the
// client already put NOMAD_ALLOC_DIR=/alloc etc. in the task env because
// we declare image isolation).
const (
	containerAllocDir   = "/alloc"
	containerLocalDir   = "/local"
	containerSecretsDir = "/secrets"
)

// createSpec is everything ContainerCreate needs.
type createSpec struct {
	name    string
	config  *container.Config
	host    *container.HostConfig
	network *network.NetworkingConfig
	portMap map[string]int32
}

// nodeLabel is the node identity used to scope reconciliation: the node
// id, or its name when the client sent no id.
func nodeLabel(cfg *plugin.TaskConfig) string {
	if cfg.NodeID != "" {
		return cfg.NodeID
	}
	return cfg.NodeName
}

// containerName follows Nomad's docker driver: <task>-<alloc id>.
func containerName(cfg *plugin.TaskConfig) string {
	return cfg.Name + "-" + cfg.AllocID
}

// buildContainer turns a task into a container spec, checking every
// option that refers to the task's environment (port labels, privileged,
// host volumes, resources) so bad input fails before anything is created.
func buildContainer(s *settings, cfg *plugin.TaskConfig, tc *TaskConfig, imageRef string) (*createSpec, error) {
	var errs []error
	fail := func(field, format string, args ...any) { errs = append(errs, fieldError(field, format, args...)) }

	labels := map[string]string{}
	for k, v := range tc.Labels {
		if strings.HasPrefix(k, labelPrefix) {
			fail("labels", "%q: the %s prefix is reserved for the driver", k, labelPrefix)
			continue
		}
		labels[k] = v
	}
	for k, v := range map[string]string{
		labelManaged: "true", labelAllocID: cfg.AllocID, labelTask: cfg.Name, labelTaskID: cfg.ID,
		labelJob: cfg.JobName, labelGroup: cfg.Group, labelNamespace: cfg.Namespace, labelNode: nodeLabel(cfg),
	} {
		labels[k] = v
	}
	if tc.Syncer.capture() {
		labels[labelCapture] = tc.Syncer.Mode
	}

	// Environment: Nomad's task env, device env, then the config's env.
	envMap := map[string]string{}
	for k, v := range cfg.Env {
		envMap[k] = v
	}
	for k, v := range cfg.DeviceEnv {
		envMap[k] = v
	}
	for k, v := range tc.Env {
		if k == "" || strings.Contains(k, "=") {
			fail("env", "%q is not a valid variable name", k)
			continue
		}
		envMap[k] = v
	}
	env := make([]string, 0, len(envMap))
	for k, v := range envMap {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)

	cc := &container.Config{
		Image:      imageRef,
		Env:        env,
		Labels:     labels,
		WorkingDir: tc.WorkDir,
		User:       tc.User,
		Hostname:   tc.Hostname,
		Tty:        tc.TTY,
		OpenStdin:  tc.Interactive,
		StdinOnce:  false,
	}
	if cc.User == "" {
		cc.User = cfg.User
	}
	if len(tc.Entrypoint) > 0 {
		cc.Entrypoint = tc.Entrypoint
	}
	switch {
	case tc.Command != "":
		cc.Cmd = append([]string{tc.Command}, tc.Args...)
	case len(tc.Args) > 0:
		cc.Cmd = tc.Args
	}

	hc := &container.HostConfig{
		CapAdd:         tc.CapAdd,
		CapDrop:        tc.CapDrop,
		DNS:            tc.DNSServers,
		DNSSearch:      tc.DNSSearchDomains,
		DNSOptions:     tc.DNSOptions,
		ShmSize:        tc.ShmSize,
		ExtraHosts:     tc.ExtraHosts,
		Sysctls:        tc.Sysctl,
		SecurityOpt:    tc.SecurityOpt,
		ReadonlyRootfs: tc.ReadonlyRootfs,
		// json-file keeps the logs API working for the log follower,
		// whatever the daemon's default driver; rotation bounds disk use.
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "20m", "max-file": "2"}},
	}
	if tc.PidsLimit > 0 {
		hc.PidsLimit = &tc.PidsLimit
	}
	if tc.Init {
		t := true
		hc.Init = &t
	}
	if tc.Privileged {
		if !s.allowPrivileged {
			fail("privileged", "the plugin does not allow privileged containers (set allow_privileged = true in the plugin config)")
		}
		hc.Privileged = true
	}
	if cfg.DNS != nil && len(tc.DNSServers) == 0 {
		hc.DNS, hc.DNSSearch, hc.DNSOptions = cfg.DNS.Servers, cfg.DNS.Searches, cfg.DNS.Options
	}
	for name, v := range tc.Ulimit {
		soft, hard, err := ulimitValue(v)
		if err != nil {
			fail("ulimit."+name, "%v", err)
			continue
		}
		hc.Ulimits = append(hc.Ulimits, &units.Ulimit{Name: name, Soft: soft, Hard: hard})
	}

	// Resources.
	if r := cfg.Resources; r != nil {
		shares := r.Linux.CPUShares
		if shares == 0 {
			shares = r.CPUShares
		}
		if shares < 0 {
			fail("resources.cpu", "%d must not be negative", shares)
		}
		hc.CPUShares = max(shares, 2)
		hc.CPUPeriod, hc.CPUQuota = r.Linux.CPUPeriod, r.Linux.CPUQuota
		hc.CpusetCpus = r.Linux.CpusetCpus
		if r.MemoryMB < 0 || r.MemoryMaxMB < 0 || r.Linux.MemoryLimitBytes < 0 {
			fail("resources.memory", "must not be negative")
		}
		mem := r.Linux.MemoryLimitBytes
		if mem == 0 {
			mem = r.MemoryMB * units.MiB
		}
		// memory_max (oversubscription) or memory_hard_limit raise the
		// hard limit; the scheduled amount becomes the soft reservation.
		hard := max(r.MemoryMaxMB*units.MiB, tc.MemoryHardLimit*units.MiB)
		if hard > mem {
			hc.MemoryReservation = mem
			mem = hard
		}
		if mem > 0 {
			if mem < 6*units.MiB {
				fail("resources.memory", "%d MiB is below Docker's minimum of 6 MiB", mem/units.MiB)
			}
			hc.Memory = mem
			hc.MemorySwap = mem // no swap, as Nomad's docker driver
		}
	}

	// Network and ports.
	mode := tc.NetworkMode
	if cfg.Network != nil && cfg.Network.Path != "" {
		// The client made a group network namespace (network { mode =
		// "bridge" }); Docker cannot join a namespace by path.
		fail("network_mode", "the group's network namespace (network mode %q at group level) is not supported by bedrock yet; use the default host-level networking with ports", "bridge")
	}
	if mode == "" {
		mode = "bridge"
	}
	hc.NetworkMode = container.NetworkMode(mode)
	portMap := map[string]int32{}
	if len(tc.Ports) > 0 {
		byLabel := map[string]plugin.PortMapping{}
		if cfg.Resources != nil {
			for _, p := range cfg.Resources.Ports {
				byLabel[p.Label] = p
			}
		}
		exposed := nat.PortSet{}
		bindings := nat.PortMap{}
		for _, label := range tc.Ports {
			p, ok := byLabel[label]
			if !ok {
				var known []string
				for l := range byLabel {
					known = append(known, l)
				}
				sort.Strings(known)
				fail("ports", "port label %q is not declared in the group's network block (declared: %s)", label, strings.Join(known, ", "))
				continue
			}
			inside := p.To
			if inside <= 0 {
				inside = p.Value
			}
			portMap[label] = inside
			if mode != "bridge" {
				continue // host networking: the app binds the host port itself
			}
			for _, proto := range []string{"tcp", "udp"} {
				cp := nat.Port(strconv.Itoa(int(inside)) + "/" + proto)
				exposed[cp] = struct{}{}
				bindings[cp] = append(bindings[cp], nat.PortBinding{HostIP: p.HostIP, HostPort: strconv.Itoa(int(p.Value))})
			}
		}
		if len(exposed) > 0 {
			cc.ExposedPorts = exposed
			hc.PortBindings = bindings
		}
	}

	// Mounts: Nomad's directories, the shared data dir, volume_mounts, then
	// the config's mount blocks.
	if cfg.AllocDir != "" {
		taskDir := filepath.Join(cfg.AllocDir, cfg.Name)
		hc.Mounts = append(hc.Mounts,
			mount.Mount{Type: mount.TypeBind, Source: filepath.Join(cfg.AllocDir, "alloc"), Target: containerAllocDir},
			mount.Mount{Type: mount.TypeBind, Source: filepath.Join(taskDir, "local"), Target: containerLocalDir},
			mount.Mount{Type: mount.TypeBind, Source: filepath.Join(taskDir, "secrets"), Target: containerSecretsDir},
		)
		if tc.Data != "" {
			hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: appDataSource(cfg.AllocDir), Target: tc.Data})
		}
		if tc.Syncer.capture() {
			// The syncer's FUSE mount onto /alloc/bedrock-live must reach the
			// host, and so the app (capturemount.go). Docker mounts it
			// after /alloc (it sorts mounts by depth).
			hc.Mounts = append(hc.Mounts, mount.Mount{
				Type: mount.TypeBind, Source: allocDataDir(cfg.AllocDir), Target: containerAllocDir + "/" + captureDirName,
				BindOptions: &mount.BindOptions{Propagation: mount.PropagationRShared},
			})
			hc.Devices = append(hc.Devices, container.DeviceMapping{PathOnHost: fuseDevice, PathInContainer: fuseDevice, CgroupPermissions: "rwm"})
		}
		for i, m := range tc.Mounts {
			mm, err := configMount(s, taskDir, m)
			if err != nil {
				fail(fmt.Sprintf("mount[%d].source", i), "%v", err)
				continue
			}
			hc.Mounts = append(hc.Mounts, mm)
		}
	} else if tc.Data != "" {
		fail("data", "the task has no allocation directory to bind")
	}
	for _, m := range cfg.Mounts {
		mm := mount.Mount{Type: mount.TypeBind, Source: m.HostPath, Target: m.TaskPath, ReadOnly: m.Readonly}
		if m.PropagationMode != "" {
			mm.BindOptions = &mount.BindOptions{Propagation: propagation(m.PropagationMode)}
		}
		hc.Mounts = append(hc.Mounts, mm)
	}
	for _, dev := range cfg.Devices {
		hc.Devices = append(hc.Devices, container.DeviceMapping{PathOnHost: dev.HostPath, PathInContainer: dev.TaskPath, CgroupPermissions: dev.CgroupPermissions})
	}
	if len(errs) > 0 {
		return nil, plugin.NewFatalError(errors.Join(errs...))
	}
	return &createSpec{name: containerName(cfg), config: cc, host: hc, network: &network.NetworkingConfig{}, portMap: portMap}, nil
}

// propagation maps Nomad's volume_mount propagation names to Docker's.
func propagation(mode string) mount.Propagation {
	switch mode {
	case "host-to-task":
		return mount.PropagationRSlave
	case "bidirectional":
		return mount.PropagationRShared
	default:
		return mount.PropagationRPrivate
	}
}

// configMount resolves a mount block. Relative bind sources live in the
// task directory and may not escape it; absolute ones need volumes_enabled.
func configMount(s *settings, taskDir string, m MountConfig) (mount.Mount, error) {
	out := mount.Mount{Target: m.Target, ReadOnly: m.Readonly}
	switch m.Type {
	case "", "bind":
		out.Type = mount.TypeBind
		src := m.Source
		if filepath.IsAbs(src) {
			if !s.volumesEnabled {
				return out, fmt.Errorf("%q: absolute host paths need volumes_enabled = true in the plugin config", src)
			}
		} else {
			src = filepath.Join(taskDir, src)
			if rel, err := filepath.Rel(taskDir, src); err != nil || strings.HasPrefix(rel, "..") {
				return out, fmt.Errorf("%q escapes the task directory", m.Source)
			}
		}
		out.Source = src
	case "volume":
		if !s.volumesEnabled {
			return out, fmt.Errorf("%q: named volumes need volumes_enabled = true in the plugin config", m.Source)
		}
		out.Type, out.Source = mount.TypeVolume, m.Source
	case "tmpfs":
		out.Type = mount.TypeTmpfs
	}
	return out, nil
}
