package driver

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/hclspec"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
)

// Defaults of the plugin block. They are declared twice on purpose: in the
// schema (so `nomad node status -verbose` style tooling sees them) and in
// Go (a validation launch may send no config at all, and nested blocks that
// are absent arrive as null, skipping the schema's inner defaults).
const (
	defaultDockerSocket    = "unix:///var/run/docker.sock"
	defaultPullTimeout     = 5 * time.Minute
	defaultImageGCDelay    = 3 * time.Minute
	defaultDanglingPeriod  = 5 * time.Minute
	defaultDanglingGrace   = 5 * time.Minute
	defaultConsulAddress   = "127.0.0.1:8500"
	defaultSyncerWatchdog  = 3 * time.Second
	configAttrEndpoint     = "docker_endpoint"
	configAttrPullTimeout  = "pull_timeout"
	taskAttrPullTimeout    = "image_pull_timeout"
	taskAttrMemoryHardLimt = "memory_hard_limit"
)

// PluginConfig is the agent's `plugin "nomad-driver-bedrock" { config {} }`
// block.
type PluginConfig struct {
	// DockerEndpoint is where the Docker Engine API answers: unix:///path
	// or tcp://host:port. Empty means $DOCKER_HOST, else the default socket.
	DockerEndpoint string     `msgpack:"docker_endpoint"`
	DockerTLS      *TLSConfig `msgpack:"docker_tls"`
	// PullTimeout bounds an image pull when the task does not set
	// image_pull_timeout.
	PullTimeout string `msgpack:"pull_timeout"`
	// AuthConfig is a Docker config.json used for registry credentials
	// when a task has neither auth nor auth_file.
	AuthConfig string `msgpack:"auth_config"`
	// AllowPrivileged lets tasks set privileged = true; off by default,
	// like Nomad's docker driver, because it gives the task the node.
	AllowPrivileged bool `msgpack:"allow_privileged"`
	// AllowUnsafePlacement disables the refusal to start tasks of a job
	// that Nomad may place with fewer than three instances on distinct
	// nodes.
	AllowUnsafePlacement bool `msgpack:"allow_unsafe_placement"`
	// VolumesEnabled allows bind mounts of absolute host paths from the
	// task's mount blocks (relative sources stay inside the task dir).
	VolumesEnabled bool `msgpack:"volumes_enabled"`
	// SyncerWatchdog kills a syncer that has been silent on its role
	// socket this long while master (frozen, hung): its lock is then
	// released by the driver at once (fence.go) instead of after the
	// session's TTL and lock-delay. "0" disables it.
	SyncerWatchdog string        `msgpack:"syncer_watchdog"`
	Consul         *ConsulConfig `msgpack:"consul"`
	Nomad          *NomadConfig  `msgpack:"nomad"`
	GC             *GCConfig     `msgpack:"gc"`
}

// TLSConfig holds client certificate files for a TLS endpoint.
type TLSConfig struct {
	CAFile   string `msgpack:"ca_file"`
	CertFile string `msgpack:"cert_file"`
	KeyFile  string `msgpack:"key_file"`
}

// ConsulConfig is how the syncer task reaches Consul.
type ConsulConfig struct {
	Address string     `msgpack:"address"`
	Token   string     `msgpack:"token"`
	TLS     *TLSConfig `msgpack:"tls"`
	// ReleaseDeadSyncer lets the driver release the lock of a syncer that
	// died while master, once its app is proven stopped (fence.go): a
	// failover in well under a second instead of the session TTL plus the
	// lock-delay. On by default; false leaves it to Consul's timers.
	ReleaseDeadSyncer *bool `msgpack:"release_dead_syncer"`
	// ServicePrefix limits the Consul service names a job's syncer may
	// register with the plugin's token: they must start with it. Empty
	// means the job's own id; "*" allows any name.
	ServicePrefix string `msgpack:"service_prefix"`
}

// NomadConfig is how the driver reads the live job for the placement
// policy.
type NomadConfig struct {
	Address string     `msgpack:"address"`
	Token   string     `msgpack:"token"`
	TLS     *TLSConfig `msgpack:"tls"`
}

// GCConfig says what the driver cleans up after tasks.
type GCConfig struct {
	// Image removes a task's image image_delay after its last task ended
	// (only if no other container uses it).
	Image      *bool  `msgpack:"image"`
	ImageDelay string `msgpack:"image_delay"`
	// Container removes a task's container on DestroyTask.
	Container *bool `msgpack:"container"`
	// DanglingContainers removes labelled containers no task owns.
	DanglingContainers *DanglingConfig `msgpack:"dangling_containers"`
}

// DanglingConfig tunes the reconciliation of containers left behind by a
// lost plugin.
type DanglingConfig struct {
	Enabled       *bool  `msgpack:"enabled"`
	Period        string `msgpack:"period"`
	CreationGrace string `msgpack:"creation_grace"`
}

// settings is the validated, defaulted plugin configuration.
type settings struct {
	endpoint             string
	tls                  *TLSConfig
	pullTimeout          time.Duration
	authConfig           string
	allowPrivileged      bool
	allowUnsafePlacement bool
	volumesEnabled       bool
	syncerWatchdog       time.Duration
	consul               ConsulConfig
	nomad                NomadConfig
	gcImage              bool
	gcImageDelay         time.Duration
	gcContainer          bool
	danglingEnabled      bool
	danglingPeriod       time.Duration
	danglingGrace        time.Duration
}

func tlsSpec() *hclspec.Spec {
	return hclspec.Object(map[string]*hclspec.Spec{
		"ca_file":   hclspec.Attr("ca_file", "string"),
		"cert_file": hclspec.Attr("cert_file", "string"),
		"key_file":  hclspec.Attr("key_file", "string"),
	})
}

// configSpec is the plugin block's schema.
func configSpec() *hclspec.Spec {
	return hclspec.Object(map[string]*hclspec.Spec{
		configAttrEndpoint:       hclspec.Attr(configAttrEndpoint, "string"),
		"docker_tls":             hclspec.Block("docker_tls", false, tlsSpec()),
		configAttrPullTimeout:    hclspec.Default(hclspec.Attr(configAttrPullTimeout, "string"), hclspec.Literal(`"5m"`)),
		"auth_config":            hclspec.Attr("auth_config", "string"),
		"allow_privileged":       hclspec.Default(hclspec.Attr("allow_privileged", "bool"), hclspec.Literal("false")),
		"allow_unsafe_placement": hclspec.Default(hclspec.Attr("allow_unsafe_placement", "bool"), hclspec.Literal("false")),
		"volumes_enabled":        hclspec.Default(hclspec.Attr("volumes_enabled", "bool"), hclspec.Literal("false")),
		"syncer_watchdog":        hclspec.Default(hclspec.Attr("syncer_watchdog", "string"), hclspec.Literal(`"3s"`)),
		"consul": hclspec.Block("consul", false, hclspec.Object(map[string]*hclspec.Spec{
			"address":             hclspec.Default(hclspec.Attr("address", "string"), hclspec.Literal(`"`+defaultConsulAddress+`"`)),
			"token":               hclspec.Attr("token", "string"),
			"tls":                 hclspec.Block("tls", false, tlsSpec()),
			"release_dead_syncer": hclspec.Default(hclspec.Attr("release_dead_syncer", "bool"), hclspec.Literal("true")),
			"service_prefix":      hclspec.Attr("service_prefix", "string"),
		})),
		"nomad": hclspec.Block("nomad", false, hclspec.Object(map[string]*hclspec.Spec{
			// No default: without an address (here or NOMAD_ADDR in the
			// agent's environment) the placement policy is not checked.
			"address": hclspec.Attr("address", "string"),
			"token":   hclspec.Attr("token", "string"),
			"tls":     hclspec.Block("tls", false, tlsSpec()),
		})),
		"gc": hclspec.Block("gc", false, hclspec.Object(map[string]*hclspec.Spec{
			"image":       hclspec.Default(hclspec.Attr("image", "bool"), hclspec.Literal("true")),
			"image_delay": hclspec.Default(hclspec.Attr("image_delay", "string"), hclspec.Literal(`"3m"`)),
			"container":   hclspec.Default(hclspec.Attr("container", "bool"), hclspec.Literal("true")),
			"dangling_containers": hclspec.Block("dangling_containers", false, hclspec.Object(map[string]*hclspec.Spec{
				"enabled":        hclspec.Default(hclspec.Attr("enabled", "bool"), hclspec.Literal("true")),
				"period":         hclspec.Default(hclspec.Attr("period", "string"), hclspec.Literal(`"5m"`)),
				"creation_grace": hclspec.Default(hclspec.Attr("creation_grace", "string"), hclspec.Literal(`"5m"`)),
			})),
		})),
	})
}

// parseDuration reads an optional duration option, naming it on error.
func parseDuration(field, s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %q is not a duration (e.g. \"30s\", \"5m\")", plugin.ErrConfig, field, s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%w: %s: %q must not be negative", plugin.ErrConfig, field, s)
	}
	return d, nil
}

func boolOr(p *bool, def bool) bool {
	if p == nil {
		return def
	}
	return *p
}

// validateEndpoint accepts the endpoint forms the Docker client supports
// and we can reach: unix sockets and TCP (optionally TLS).
func validateEndpoint(ep string) error {
	u, err := url.Parse(ep)
	if err != nil {
		return fmt.Errorf("%w: %s: %q is not a URL: %w", plugin.ErrConfig, configAttrEndpoint, ep, err)
	}
	switch u.Scheme {
	case "unix":
		if u.Path == "" {
			return fmt.Errorf("%w: %s: %q has no socket path (want unix:///path/to/docker.sock)", plugin.ErrConfig, configAttrEndpoint, ep)
		}
	case "tcp", "http", "https":
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return fmt.Errorf("%w: %s: %q needs host:port (want tcp://host:2375)", plugin.ErrConfig, configAttrEndpoint, ep)
		}
	default:
		return fmt.Errorf("%w: %s: %q: unsupported scheme %q (want unix:// or tcp://)", plugin.ErrConfig, configAttrEndpoint, ep, u.Scheme)
	}
	return nil
}

func checkTLSFiles(field string, t *TLSConfig) error {
	if t == nil {
		return nil
	}
	for name, p := range map[string]string{"ca_file": t.CAFile, "cert_file": t.CertFile, "key_file": t.KeyFile} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%w: %s.%s: %w", plugin.ErrConfig, field, name, err)
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return fmt.Errorf("%w: %s: cert_file and key_file go together", plugin.ErrConfig, field)
	}
	return nil
}

// parsePluginConfig decodes and validates the plugin block; every error
// names the offending option.
func parsePluginConfig(raw []byte) (*settings, error) {
	var c PluginConfig
	if err := plugin.DecodeConfig(raw, &c); err != nil {
		return nil, fmt.Errorf("plugin config: %w", err)
	}
	s := &settings{
		endpoint:             c.DockerEndpoint,
		tls:                  c.DockerTLS,
		authConfig:           c.AuthConfig,
		allowPrivileged:      c.AllowPrivileged,
		allowUnsafePlacement: c.AllowUnsafePlacement,
		volumesEnabled:       c.VolumesEnabled,
		consul:               ConsulConfig{Address: defaultConsulAddress},
		nomad:                NomadConfig{},
	}
	if s.endpoint == "" {
		s.endpoint = os.Getenv("DOCKER_HOST")
	}
	if s.endpoint == "" {
		s.endpoint = defaultDockerSocket
	}
	var errs []error
	if err := validateEndpoint(s.endpoint); err != nil {
		errs = append(errs, err)
	}
	if err := checkTLSFiles("docker_tls", c.DockerTLS); err != nil {
		errs = append(errs, err)
	}
	var err error
	if s.pullTimeout, err = parseDuration(configAttrPullTimeout, c.PullTimeout, defaultPullTimeout); err != nil {
		errs = append(errs, err)
	}
	if s.syncerWatchdog, err = parseDuration("syncer_watchdog", c.SyncerWatchdog, defaultSyncerWatchdog); err != nil {
		errs = append(errs, err)
	} else if s.syncerWatchdog != 0 && s.syncerWatchdog < 2*announce.DefaultSilence {
		errs = append(errs, fmt.Errorf("%w: syncer_watchdog: %s is too short: at least %s (twice the gate's silence) or \"0\" to disable", plugin.ErrConfig, s.syncerWatchdog, 2*announce.DefaultSilence))
	}
	if c.AuthConfig != "" {
		if _, err := os.Stat(c.AuthConfig); err != nil {
			errs = append(errs, fmt.Errorf("%w: auth_config: %w", plugin.ErrConfig, err))
		}
	}
	if c.Consul != nil {
		if c.Consul.Address != "" {
			s.consul.Address = c.Consul.Address
		}
		s.consul.Token, s.consul.TLS = c.Consul.Token, c.Consul.TLS
		s.consul.ReleaseDeadSyncer = c.Consul.ReleaseDeadSyncer
		s.consul.ServicePrefix = c.Consul.ServicePrefix
		if err := checkTLSFiles("consul.tls", c.Consul.TLS); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Nomad != nil {
		if c.Nomad.Address != "" {
			s.nomad.Address = c.Nomad.Address
		}
		if _, err := url.Parse(s.nomad.Address); err != nil || !strings.Contains(s.nomad.Address, "://") {
			errs = append(errs, fmt.Errorf("%w: nomad.address: %q is not a URL like http://127.0.0.1:4646", plugin.ErrConfig, s.nomad.Address))
		}
		s.nomad.Token, s.nomad.TLS = c.Nomad.Token, c.Nomad.TLS
		if err := checkTLSFiles("nomad.tls", c.Nomad.TLS); err != nil {
			errs = append(errs, err)
		}
	}
	gc := c.GC
	if gc == nil {
		gc = &GCConfig{}
	}
	s.gcImage = boolOr(gc.Image, true)
	s.gcContainer = boolOr(gc.Container, true)
	if s.gcImageDelay, err = parseDuration("gc.image_delay", gc.ImageDelay, defaultImageGCDelay); err != nil {
		errs = append(errs, err)
	}
	dc := gc.DanglingContainers
	if dc == nil {
		dc = &DanglingConfig{}
	}
	s.danglingEnabled = boolOr(dc.Enabled, true)
	if s.danglingPeriod, err = parseDuration("gc.dangling_containers.period", dc.Period, defaultDanglingPeriod); err != nil {
		errs = append(errs, err)
	} else if s.danglingPeriod < time.Second {
		errs = append(errs, fmt.Errorf("%w: gc.dangling_containers.period: must be at least 1s", plugin.ErrConfig))
	}
	if s.danglingGrace, err = parseDuration("gc.dangling_containers.creation_grace", dc.CreationGrace, defaultDanglingGrace); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("plugin config: %w", errors.Join(errs...))
	}
	return s, nil
}
