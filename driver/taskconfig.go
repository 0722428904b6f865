package driver

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/hclspec"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// TaskConfig is the job's task `config {}` block. Nomad has one task schema
// per driver, so the app task (image set) and the syncer task (syncer block
// set) share it; exactly one of the two must be given. Option names follow
// Nomad's docker driver where the meaning is the same.
type TaskConfig struct {
	Image            string            `msgpack:"image"`
	Command          string            `msgpack:"command"`
	Entrypoint       []string          `msgpack:"entrypoint"`
	Args             []string          `msgpack:"args"`
	Ports            []string          `msgpack:"ports"`
	Env              map[string]string `msgpack:"env"`
	Labels           map[string]string `msgpack:"labels"`
	Data             string            `msgpack:"data"`
	WorkDir          string            `msgpack:"work_dir"`
	User             string            `msgpack:"user"`
	Hostname         string            `msgpack:"hostname"`
	NetworkMode      string            `msgpack:"network_mode"`
	DNSServers       []string          `msgpack:"dns_servers"`
	DNSSearchDomains []string          `msgpack:"dns_search_domains"`
	DNSOptions       []string          `msgpack:"dns_options"`
	CapAdd           []string          `msgpack:"cap_add"`
	CapDrop          []string          `msgpack:"cap_drop"`
	Privileged       bool              `msgpack:"privileged"`
	Init             bool              `msgpack:"init"`
	TTY              bool              `msgpack:"tty"`
	Interactive      bool              `msgpack:"interactive"`
	Auth             *RegistryAuth     `msgpack:"auth"`
	AuthFile         string            `msgpack:"auth_file"`
	ForcePull        bool              `msgpack:"force_pull"`
	ImagePullTimeout string            `msgpack:"image_pull_timeout"`
	ShmSize          int64             `msgpack:"shm_size"`
	Ulimit           map[string]string `msgpack:"ulimit"`
	Mounts           []MountConfig     `msgpack:"mount"`
	MemoryHardLimit  int64             `msgpack:"memory_hard_limit"`
	ExtraHosts       []string          `msgpack:"extra_hosts"`
	Sysctl           map[string]string `msgpack:"sysctl"`
	SecurityOpt      []string          `msgpack:"security_opt"`
	ReadonlyRootfs   bool              `msgpack:"readonly_rootfs"`
	PidsLimit        int64             `msgpack:"pids_limit"`
	Syncer           *SyncerConfig     `msgpack:"syncer"`
}

// RegistryAuth is inline registry credentials. The password never reaches
// logs or events.
type RegistryAuth struct {
	Username      string `msgpack:"username"`
	Password      string `msgpack:"password"`
	Email         string `msgpack:"email"`
	ServerAddress string `msgpack:"server_address"`
}

// MountConfig is one extra mount of the container. Bind sources are
// relative to the task directory unless the plugin allows host volumes.
type MountConfig struct {
	Type     string `msgpack:"type"`
	Source   string `msgpack:"source"`
	Target   string `msgpack:"target"`
	Readonly bool   `msgpack:"readonly"`
}

// SyncerConfig is the syncer task's block (see DESIGN.md): the group port
// replication listens on, and how the instance is announced in Consul.
type SyncerConfig struct {
	Port        string   `msgpack:"port"`
	MetricsPort string   `msgpack:"metrics_port"`
	Secret      string   `msgpack:"secret"`
	Service     string   `msgpack:"service"`
	Tags        []string `msgpack:"tags"`
	// SessionTTL and LockDelay tune the Consul session behind the
	// election (Go durations; defaults 3s and 2s). Consul servers refuse
	// TTLs below their session_ttl_min (10s unless lowered).
	SessionTTL string `msgpack:"session_ttl"`
	LockDelay  string `msgpack:"lock_delay"`
	// Mode is how the syncer learns the app's writes: "async" (default)
	// and "sync" capture every write through a FUSE mount at the data path
	// (capturemount.go), so a clone only ever holds a state the master's
	// disk passed through, "sync" also holding the app's fsync until
	// clones have the data; "watch" watches the data directory (no FUSE
	// needed, but a clone may hold files of different moments).
	Mode string `msgpack:"mode"`
	// SyncAcks is how many clones must hold an fsync before it returns in
	// sync mode (default 1: with the master, a majority of three);
	// SyncTimeout how long it waits for them before it fails with EIO
	// (default 10s): an app then sees a disk error, not a false success.
	SyncAcks    int64  `msgpack:"sync_acks"`
	SyncTimeout string `msgpack:"sync_timeout"`
}

// The syncer's modes (syncer.mode).
const (
	syncerModeWatch = "watch"
	syncerModeAsync = "async"
	syncerModeSync  = "sync"
)

// capture tells whether the syncer serves the app's data path through its
// FUSE capture mount.
func (c *SyncerConfig) capture() bool {
	return c != nil && (c.Mode == syncerModeAsync || c.Mode == syncerModeSync)
}

// defaultSyncerMode is the mode of a syncer block that names none: crash-consistent
// replicas without making the app wait (issue 16).
const defaultSyncerMode = syncerModeAsync

// validateMode checks syncer.mode and fills in the default.
func (c *SyncerConfig) validateMode() error {
	if c.Mode == "" {
		c.Mode = defaultSyncerMode
	}
	switch c.Mode {
	case syncerModeSync:
		if c.SyncAcks < 0 || c.SyncAcks > 16 {
			return fieldError("syncer.sync_acks", "%d: how many clones must hold an fsync, from 1 (the default) to the group's count minus one", c.SyncAcks)
		}
		if c.SyncTimeout != "" {
			d, err := time.ParseDuration(c.SyncTimeout)
			if err != nil || d < 100*time.Millisecond || d > 10*time.Minute {
				return fieldError("syncer.sync_timeout", "%q: a Go duration from 100ms to 10m (default 10s), how long an fsync waits for the clones before it fails with EIO", c.SyncTimeout)
			}
		}
		return nil
	case syncerModeWatch, syncerModeAsync:
		if c.SyncAcks != 0 || c.SyncTimeout != "" {
			return fieldError("syncer.sync_acks/sync_timeout", "only mean something with mode = %q (the mode is %q)", syncerModeSync, c.Mode)
		}
		return nil
	}
	return fieldError("syncer.mode", "%q is not one of %q (the default: capture every write through a FUSE mount), %q (as async, and the app's fsync waits for the clones) or %q (replicate the data directory as a file watcher sees it; no FUSE needed)",
		c.Mode, syncerModeAsync, syncerModeSync, syncerModeWatch)
}

// Kinds of task the schema describes.
const (
	kindApp    = "app"
	kindSyncer = "syncer"
)

// taskConfigSpec is the task block's schema.
func taskConfigSpec() *hclspec.Spec {
	str := func(n string) *hclspec.Spec { return hclspec.Attr(n, "string") }
	strs := func(n string) *hclspec.Spec { return hclspec.Attr(n, "list(string)") }
	boolean := func(n string) *hclspec.Spec {
		return hclspec.Default(hclspec.Attr(n, "bool"), hclspec.Literal("false"))
	}
	// Map-valued options arrive as a list holding one map (DESIGN.md).
	maps := func(n string) *hclspec.Spec { return hclspec.Attr(n, "list(map(string))") }
	return hclspec.Object(map[string]*hclspec.Spec{
		"image":              str("image"),
		"command":            str("command"),
		"entrypoint":         strs("entrypoint"),
		"args":               strs("args"),
		"ports":              strs("ports"),
		"env":                maps("env"),
		"labels":             maps("labels"),
		"data":               str("data"),
		"work_dir":           str("work_dir"),
		"user":               str("user"),
		"hostname":           str("hostname"),
		"network_mode":       str("network_mode"),
		"dns_servers":        strs("dns_servers"),
		"dns_search_domains": strs("dns_search_domains"),
		"dns_options":        strs("dns_options"),
		"cap_add":            strs("cap_add"),
		"cap_drop":           strs("cap_drop"),
		"privileged":         boolean("privileged"),
		"init":               boolean("init"),
		"tty":                boolean("tty"),
		"interactive":        boolean("interactive"),
		"auth": hclspec.Block("auth", false, hclspec.Object(map[string]*hclspec.Spec{
			"username":       str("username"),
			"password":       str("password"),
			"email":          str("email"),
			"server_address": str("server_address"),
		})),
		"auth_file":            str("auth_file"),
		"force_pull":           boolean("force_pull"),
		taskAttrPullTimeout:    str(taskAttrPullTimeout),
		"shm_size":             hclspec.Attr("shm_size", "number"),
		"ulimit":               maps("ulimit"),
		taskAttrMemoryHardLimt: hclspec.Attr(taskAttrMemoryHardLimt, "number"),
		"extra_hosts":          strs("extra_hosts"),
		"sysctl":               maps("sysctl"),
		"security_opt":         strs("security_opt"),
		"readonly_rootfs":      boolean("readonly_rootfs"),
		"pids_limit":           hclspec.Attr("pids_limit", "number"),
		"mount": hclspec.BlockList("mount", hclspec.Object(map[string]*hclspec.Spec{
			"type":     hclspec.Default(str("type"), hclspec.Literal(`"bind"`)),
			"source":   str("source"),
			"target":   hclspec.RequiredAttr("target", "string"),
			"readonly": boolean("readonly"),
		})),
		"syncer": hclspec.Block("syncer", false, hclspec.Object(map[string]*hclspec.Spec{
			"port":         hclspec.RequiredAttr("port", "string"),
			"metrics_port": str("metrics_port"),
			"secret":       str("secret"),
			"service":      str("service"),
			"tags":         strs("tags"),
			"session_ttl":  str("session_ttl"),
			"lock_delay":   str("lock_delay"),
			"mode":         str("mode"),
			"sync_acks":    hclspec.Attr("sync_acks", "number"),
			"sync_timeout": str("sync_timeout"),
		})),
	})
}

// fieldError is a task config error naming the option; the user must
// change the job, so it is never retried.
func fieldError(field, format string, args ...any) error {
	return plugin.NewFatalError(fmt.Errorf("%w: %s: %s", plugin.ErrConfig, field, fmt.Sprintf(format, args...)))
}

// decodeTaskConfig decodes and validates a task's config block. It checks
// everything that can be checked without the engine, so bad input never
// creates a container.
func decodeTaskConfig(raw []byte) (*TaskConfig, string, error) {
	var c TaskConfig
	if err := plugin.DecodeConfig(raw, &c); err != nil {
		return nil, "", plugin.NewFatalError(fmt.Errorf("task config: %w", err))
	}
	switch {
	case c.Image != "" && c.Syncer != nil:
		return nil, "", fieldError("image", "a task is either an app task (image) or a syncer task (syncer block), not both")
	case c.Syncer != nil:
		if strings.TrimSpace(c.Syncer.Port) == "" {
			return nil, "", fieldError("syncer.port", "must name a port of the group's network block")
		}
		if err := c.Syncer.validateTiming(); err != nil {
			return nil, "", err
		}
		if err := c.Syncer.validateMode(); err != nil {
			return nil, "", err
		}
		return &c, kindSyncer, nil
	case strings.TrimSpace(c.Image) == "":
		return nil, "", fieldError("image", `is required for an app task (or give a syncer block for a syncer task), e.g. image = "redis:7"`)
	}
	if err := c.validateApp(); err != nil {
		return nil, "", err
	}
	return &c, kindApp, nil
}

// ulimitValue parses "soft:hard" or "n".
func ulimitValue(v string) (soft, hard int64, err error) {
	parts := strings.SplitN(v, ":", 2)
	soft, err = strconv.ParseInt(strings.TrimSpace(parts[0]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("not a number: %q", v)
	}
	hard = soft
	if len(parts) == 2 {
		if hard, err = strconv.ParseInt(strings.TrimSpace(parts[1]), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("not a number: %q", v)
		}
	}
	if soft < -1 || hard < -1 || (hard >= 0 && soft > hard) {
		return 0, 0, fmt.Errorf("soft limit above hard limit or negative: %q", v)
	}
	return soft, hard, nil
}

func (c *TaskConfig) validateApp() error {
	var errs []error
	if _, err := reference.ParseNormalizedNamed(c.Image); err != nil {
		errs = append(errs, fieldError("image", "%q is not a valid image reference: %v", c.Image, err))
	}
	if c.Data != "" && !path.IsAbs(c.Data) {
		errs = append(errs, fieldError("data", "%q must be an absolute path inside the container, e.g. \"/data\"", c.Data))
	}
	if c.WorkDir != "" && !path.IsAbs(c.WorkDir) {
		errs = append(errs, fieldError("work_dir", "%q must be an absolute path", c.WorkDir))
	}
	switch c.NetworkMode {
	case "", "bridge", "host", "none":
	default:
		errs = append(errs, fieldError("network_mode", "%q is not supported (use \"bridge\", \"host\" or \"none\")", c.NetworkMode))
	}
	if c.ShmSize < 0 {
		errs = append(errs, fieldError("shm_size", "%d must not be negative", c.ShmSize))
	}
	if c.MemoryHardLimit < 0 {
		errs = append(errs, fieldError(taskAttrMemoryHardLimt, "%d must not be negative (MiB)", c.MemoryHardLimit))
	}
	if c.PidsLimit < 0 {
		errs = append(errs, fieldError("pids_limit", "%d must not be negative", c.PidsLimit))
	}
	for _, h := range c.ExtraHosts {
		if name, ip, ok := strings.Cut(h, ":"); !ok || name == "" || ip == "" {
			errs = append(errs, fieldError("extra_hosts", "%q is not host:ip", h))
		}
	}
	if _, err := parseDuration(taskAttrPullTimeout, c.ImagePullTimeout, 0); err != nil {
		errs = append(errs, plugin.NewFatalError(err))
	}
	for name, v := range c.Ulimit {
		if _, _, err := ulimitValue(v); err != nil {
			errs = append(errs, fieldError("ulimit."+name, "%v", err))
		}
	}
	for i, m := range c.Mounts {
		field := fmt.Sprintf("mount[%d]", i)
		if !path.IsAbs(m.Target) {
			errs = append(errs, fieldError(field+".target", "%q must be an absolute path", m.Target))
		}
		switch m.Type {
		case "", "bind", "volume":
			if m.Source == "" {
				errs = append(errs, fieldError(field+".source", "is required for a %s mount", m.Type))
			}
		case "tmpfs":
		default:
			errs = append(errs, fieldError(field+".type", "%q is not one of bind, volume, tmpfs", m.Type))
		}
	}
	if c.Auth != nil && c.AuthFile != "" {
		errs = append(errs, fieldError("auth_file", "give either an auth block or auth_file, not both"))
	}
	if len(errs) > 0 {
		return plugin.NewFatalError(errors.Join(errs...))
	}
	return nil
}

// pullTimeout is the task's pull timeout, or the plugin's.
func (c *TaskConfig) pullTimeout(def time.Duration) time.Duration {
	if d, err := parseDuration(taskAttrPullTimeout, c.ImagePullTimeout, def); err == nil && d > 0 {
		return d
	}
	return def
}

// validateTiming checks the session settings the way the syncer will, so
// a bad value fails the task at once with the option's name.
func (c *SyncerConfig) validateTiming() error {
	var t lease.Timing
	for _, f := range []struct {
		name string
		val  string
		dst  *time.Duration
	}{{"syncer.session_ttl", c.SessionTTL, &t.TTL}, {"syncer.lock_delay", c.LockDelay, &t.LockDelay}} {
		if f.val == "" {
			continue
		}
		d, err := time.ParseDuration(f.val)
		if err != nil || d <= 0 {
			return fieldError(f.name, "%q is not a positive duration (e.g. \"3s\")", f.val)
		}
		*f.dst = d
	}
	if err := t.WithDefaults().Validate(); err != nil {
		return fieldError("syncer.session_ttl/lock_delay", "%v", err)
	}
	return nil
}
