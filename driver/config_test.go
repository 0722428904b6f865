package driver

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/registry"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/hclspec"
)

func mp(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPluginConfigDefaults(t *testing.T) {
	t.Setenv("DOCKER_HOST", "")
	s, err := parsePluginConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.endpoint != defaultDockerSocket || s.pullTimeout != 5*time.Minute || !s.gcImage || s.gcImageDelay != 3*time.Minute ||
		!s.gcContainer || s.allowPrivileged || s.allowUnsafePlacement || !s.danglingEnabled || s.danglingPeriod != 5*time.Minute ||
		s.syncerWatchdog != 3*time.Second || !boolOr(s.consul.ReleaseDeadSyncer, true) {
		t.Errorf("defaults: %+v", s)
	}
	t.Setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
	if s, _ := parsePluginConfig(nil); s.endpoint != "tcp://127.0.0.1:2375" {
		t.Errorf("DOCKER_HOST not used: %s", s.endpoint)
	}
}

func TestPluginConfigValues(t *testing.T) {
	s, err := parsePluginConfig(mp(t, map[string]any{
		"docker_endpoint": "unix:///run/other.sock",
		"pull_timeout":    "90s",
		"gc": map[string]any{"image": false, "image_delay": "10m", "container": true,
			"dangling_containers": map[string]any{"enabled": false, "period": "1m", "creation_grace": "2m"}},
		"allow_privileged": true, "allow_unsafe_placement": true,
		"consul":          map[string]any{"address": "10.0.0.1:8500", "token": "t", "release_dead_syncer": false},
		"nomad":           map[string]any{"address": "https://nomad:4646"},
		"syncer_watchdog": "0",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if s.endpoint != "unix:///run/other.sock" || s.pullTimeout != 90*time.Second || s.gcImage || s.gcImageDelay != 10*time.Minute ||
		s.danglingEnabled || s.danglingPeriod != time.Minute || s.danglingGrace != 2*time.Minute ||
		!s.allowPrivileged || !s.allowUnsafePlacement || s.consul.Address != "10.0.0.1:8500" || s.nomad.Address != "https://nomad:4646" ||
		s.syncerWatchdog != 0 || boolOr(s.consul.ReleaseDeadSyncer, true) {
		t.Errorf("values: %+v", s)
	}
}

func TestPluginConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		cfg  map[string]any
		want string
	}{
		{map[string]any{"docker_endpoint": "ftp://x"}, "docker_endpoint"},
		{map[string]any{"docker_endpoint": "unix://"}, "docker_endpoint"},
		{map[string]any{"docker_endpoint": "tcp://nohostport"}, "docker_endpoint"},
		{map[string]any{"docker_endpoint": 42}, "docker_endpoint"},
		{map[string]any{"pull_timeout": "soon"}, "pull_timeout"},
		{map[string]any{"pull_timeout": "-1s"}, "pull_timeout"},
		{map[string]any{"gc": map[string]any{"image_delay": "x"}}, "gc.image_delay"},
		{map[string]any{"gc": map[string]any{"dangling_containers": map[string]any{"period": "1ms"}}}, "gc.dangling_containers.period"},
		{map[string]any{"auth_config": "/no/such/config.json"}, "auth_config"},
		{map[string]any{"docker_tls": map[string]any{"ca_file": "/no/such/ca.pem"}}, "docker_tls.ca_file"},
		{map[string]any{"nomad": map[string]any{"address": "nomad:4646"}}, "nomad.address"},
		{map[string]any{"bogus": true}, "bogus"},
		{map[string]any{"syncer_watchdog": "1s"}, "syncer_watchdog"},
		{map[string]any{"syncer_watchdog": "often"}, "syncer_watchdog"},
		{map[string]any{"consul": map[string]any{"release_dead_syncer": "yes"}}, "release_dead_syncer"},
	} {
		_, err := parsePluginConfig(mp(t, tc.cfg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want an error naming %s, got %v", tc.cfg, tc.want, err)
		}
	}
}

func TestSchemasConvert(t *testing.T) {
	if _, err := hclspec.ToHCLDec(configSpec()); err != nil {
		t.Errorf("plugin schema: %v", err)
	}
	if _, err := hclspec.ToHCLDec(taskConfigSpec()); err != nil {
		t.Errorf("task schema: %v", err)
	}
}

func TestTaskKinds(t *testing.T) {
	tc, kind, err := decodeTaskConfig(mp(t, map[string]any{"syncer": map[string]any{"port": "sync", "tags": []string{"a"}}}))
	if err != nil || kind != kindSyncer || tc.Syncer.Port != "sync" {
		t.Errorf("syncer: %v %v %+v", kind, err, tc)
	}
	if _, _, err := decodeTaskConfig(mp(t, map[string]any{"syncer": map[string]any{"port": ""}})); err == nil || !strings.Contains(err.Error(), "syncer.port") {
		t.Errorf("empty syncer port: %v", err)
	}
	if _, _, err := decodeTaskConfig(mp(t, map[string]any{"syncer": map[string]any{"port": "sync", "session_ttl": "15s", "lock_delay": "15s"}})); err != nil {
		t.Errorf("Consul's default lock settings: %v", err)
	}
	for _, bad := range []map[string]any{
		{"port": "sync", "session_ttl": "soon"},
		{"port": "sync", "lock_delay": "-2s"},
		{"port": "sync", "session_ttl": "500ms"},                  // below Consul's 1s floor
		{"port": "sync", "session_ttl": "3s", "lock_delay": "5s"}, // a lock-delay above the TTL
	} {
		if _, _, err := decodeTaskConfig(mp(t, map[string]any{"syncer": bad})); err == nil || !strings.Contains(err.Error(), "syncer.") {
			t.Errorf("%v: want an error naming the syncer option, got %v", bad, err)
		}
	}
	tc, kind, err = decodeTaskConfig(mp(t, map[string]any{"image": "redis:7", "labels": []map[string]string{{"a": "b"}}}))
	if err != nil || kind != kindApp || tc.Labels["a"] != "b" {
		t.Errorf("app: %v %v %+v", kind, err, tc)
	}
}

func TestUlimitValue(t *testing.T) {
	for in, want := range map[string][2]int64{"1024": {1024, 1024}, "1024:2048": {1024, 2048}, "-1:-1": {-1, -1}} {
		s, h, err := ulimitValue(in)
		if err != nil || s != want[0] || h != want[1] {
			t.Errorf("%s: %d %d %v", in, s, h, err)
		}
	}
	for _, in := range []string{"x", "2048:1024", "1:y", "-5"} {
		if _, _, err := ulimitValue(in); err == nil {
			t.Errorf("%s accepted", in)
		}
	}
}

func TestBuildContainerResourcesAndPorts(t *testing.T) {
	s := &settings{}
	cfg := &plugin.TaskConfig{
		ID: "a/app/1", Name: "app", AllocID: "a", AllocDir: "/allocs/a",
		Env: map[string]string{"A": "nomad", "B": "nomad"},
		Resources: &plugin.Resources{
			CPUShares: 100, MemoryMB: 64, MemoryMaxMB: 128,
			Linux: plugin.LinuxResources{CPUShares: 100, MemoryLimitBytes: 64 << 20, CpusetCpus: "0-1"},
			Ports: []plugin.PortMapping{{Label: "http", Value: 23456, To: 8080, HostIP: "127.0.0.1"}, {Label: "raw", Value: 23457, HostIP: "127.0.0.1"}},
		},
	}
	tc := &TaskConfig{Image: "x:1", Ports: []string{"http", "raw"}, Env: map[string]string{"B": "config"}, Data: "/data"}
	spec, err := buildContainer(s, cfg, tc, "x:1")
	if err != nil {
		t.Fatal(err)
	}
	hc := spec.host
	if hc.CPUShares != 100 || hc.Memory != 128<<20 || hc.MemoryReservation != 64<<20 || hc.CpusetCpus != "0-1" {
		t.Errorf("resources %d %d %d %q", hc.CPUShares, hc.Memory, hc.MemoryReservation, hc.CpusetCpus)
	}
	if b := hc.PortBindings["8080/tcp"]; len(b) != 1 || b[0].HostPort != "23456" || b[0].HostIP != "127.0.0.1" {
		t.Errorf("8080/tcp -> %v", b)
	}
	if b := hc.PortBindings["23457/udp"]; len(b) != 1 || b[0].HostPort != "23457" {
		t.Errorf("23457/udp -> %v", b)
	}
	if spec.portMap["http"] != 8080 || spec.portMap["raw"] != 23457 {
		t.Errorf("port map %v", spec.portMap)
	}
	env := strings.Join(spec.config.Env, ",")
	if !strings.Contains(env, "A=nomad") || !strings.Contains(env, "B=config") {
		t.Errorf("env %s", env)
	}
	targets := map[string]string{}
	for _, m := range hc.Mounts {
		targets[m.Target] = m.Source
	}
	for target, src := range map[string]string{"/alloc": "/allocs/a/alloc", "/local": "/allocs/a/app/local", "/secrets": "/allocs/a/app/secrets", "/data": "/allocs/a/alloc/data"} {
		if targets[target] != src {
			t.Errorf("mount %s <- %q, want %q", target, targets[target], src)
		}
	}
	if spec.name != "app-a" || spec.config.Labels[labelTaskID] != "a/app/1" {
		t.Errorf("name %s labels %v", spec.name, spec.config.Labels)
	}

	// Host networking publishes nothing.
	tc.NetworkMode = "host"
	spec, err = buildContainer(s, cfg, tc, "x:1")
	if err != nil || len(spec.host.PortBindings) != 0 || spec.host.NetworkMode != container.NetworkMode("host") {
		t.Errorf("host mode: %v %v", err, spec.host.PortBindings)
	}

	// Errors are collected and name fields.
	cfg.Resources.MemoryMB = -1
	_, err = buildContainer(s, cfg, &TaskConfig{Image: "x", Ports: []string{"nope"}, Privileged: true}, "x")
	for _, want := range []string{`ports: port label "nope"`, "privileged", "resources.memory"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if plugin.IsRecoverable(err) {
		t.Error("config errors are fatal")
	}
}

func TestAuthFromDockerConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	cfg := map[string]any{"auths": map[string]any{
		"registry.example.com:5000":   map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte("alice:pw1"))},
		"https://index.docker.io/v1/": map[string]string{"username": "bob", "password": "pw2"},
	}}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ac, err := authFromDockerConfig(file, "registry.example.com:5000/team/app:1")
	if err != nil || ac == nil || ac.Username != "alice" || ac.Password != "pw1" {
		t.Errorf("private registry: %+v %v", ac, err)
	}
	ac, err = authFromDockerConfig(file, "redis:7")
	if err != nil || ac == nil || ac.Username != "bob" {
		t.Errorf("docker hub: %+v %v", ac, err)
	}
	ac, err = authFromDockerConfig(file, "other.example.com/x:1")
	if err != nil || ac != nil {
		t.Errorf("unrelated registry gets credentials: %+v %v", ac, err)
	}

	// The task's auth block wins, and is encoded as the engine expects.
	d := newDriver(nil)
	hdr, err := d.registryAuth("registry.example.com:5000/x:1", &TaskConfig{Auth: &RegistryAuth{Username: "u", Password: "p"}, AuthFile: file})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.URLEncoding.DecodeString(hdr)
	if err != nil {
		t.Fatal(err)
	}
	var got registry.AuthConfig
	if err := json.Unmarshal(raw, &got); err != nil || got.Username != "u" || got.Password != "p" {
		t.Errorf("header %s: %+v %v", raw, got, err)
	}
	if _, err := d.registryAuth("x:1", &TaskConfig{AuthFile: filepath.Join(dir, "missing.json")}); err == nil || !strings.Contains(err.Error(), "auth_file") {
		t.Errorf("missing auth_file: %v", err)
	}
}

func TestClassifyPullError(t *testing.T) {
	for msg, recoverable := range map[string]bool{
		"manifest for x:1 not found: manifest unknown":                    false,
		"pull access denied for x, repository does not exist":             false,
		"unauthorized: incorrect username or password":                    false,
		"Get \"https://127.0.0.1:1/v2/\": dial tcp: connection refused":   true,
		"received unexpected HTTP status: 503 Service Unavailable":        true,
		"invalid reference format: repository name must be lowercase":     false,
		"Get https://registry/v2/: net/http: TLS handshake timeout":       true,
		"error parsing HTTP 404 response body: ... not found":             false,
		"toomanyrequests: You have reached your pull rate limit":          true,
		"Head \"https://r/v2/x/manifests/1\": authentication required":    false,
		"failed to resolve reference: failed to do request: EOF (stream)": true,
	} {
		err := classifyPullError("x:1", errString(msg))
		if plugin.IsRecoverable(err) != recoverable || !strings.Contains(err.Error(), "pulling image x:1") {
			t.Errorf("%q: recoverable %v, error %v", msg, plugin.IsRecoverable(err), err)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }
