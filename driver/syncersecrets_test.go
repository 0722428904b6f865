package driver

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

func syncerTaskConfig(t *testing.T) (*plugin.TaskConfig, *SyncerConfig, plugin.PortMapping) {
	t.Helper()
	alloc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(alloc, "syncer", "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(alloc, "alloc", "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	port := plugin.PortMapping{Label: "sync", Value: 7400, HostIP: "127.0.0.1"}
	cfg := &plugin.TaskConfig{
		ID: "a/syncer/1", Name: "syncer", AllocID: "alloc-1", AllocDir: alloc, JobID: "web", JobName: "web", Group: "g",
		Env:       map[string]string{syncerSecretEnv: "0123456789abcdef-from-env", syncerConsulTokenEnv: "tok-env", "KEEP": "1"},
		Resources: &plugin.Resources{Ports: []plugin.PortMapping{port, {Label: "http", Value: 8080}}},
	}
	return cfg, &SyncerConfig{Port: "sync"}, port
}

// TestSyncerSecretsAreFiles: the replication secret, the plugin's Consul
// token and its Consul TLS files reach the syncer as files in the task's
// secrets dir (owner-only), never in the container's environment or on its
// command line, where `docker inspect` shows them.
func TestSyncerSecretsAreFiles(t *testing.T) {
	cfg, sc, port := syncerTaskConfig(t)
	pems := t.TempDir()
	tlsCfg := &TLSConfig{CAFile: filepath.Join(pems, "ca.pem"), CertFile: filepath.Join(pems, "c.pem"), KeyFile: filepath.Join(pems, "k.pem")}
	for _, f := range []string{tlsCfg.CAFile, tlsCfg.CertFile, tlsCfg.KeyFile} {
		if err := os.WriteFile(f, []byte("PEM of "+filepath.Base(f)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := &settings{consul: ConsulConfig{Address: "127.0.0.1:8501", Token: "plugin-consul-token", TLS: tlsCfg}}
	const secret = "0123456789abcdef-the-secret"
	tc, err := syncerTask(s, cfg, sc, "bedrock-syncer:test", secret, port, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := buildContainer(s, cfg, tc, "bedrock-syncer:test")
	if err != nil {
		t.Fatal(err)
	}
	visible := strings.Join(append(append([]string{}, spec.config.Env...), tc.Args...), "\n")
	for _, leak := range []string{secret, "plugin-consul-token", "0123456789abcdef-from-env", "tok-env"} {
		if strings.Contains(visible, leak) {
			t.Errorf("%q is visible in the container's env or args:\n%s", leak, visible)
		}
	}
	if !slices.Contains(spec.config.Env, "KEEP=1") {
		t.Errorf("the rest of the task env is lost: %v", spec.config.Env)
	}
	want := map[string]string{
		"-secret-file":       secret,
		"-consul-token-file": "plugin-consul-token",
		"-consul-ca-file":    "PEM of ca.pem",
		"-consul-cert-file":  "PEM of c.pem",
		"-consul-key-file":   "PEM of k.pem",
	}
	for flag, content := range want {
		i := slices.Index(tc.Args, flag)
		if i < 0 || i+1 >= len(tc.Args) || !strings.HasPrefix(tc.Args[i+1], containerSecretsDir+"/") {
			t.Errorf("%s not passed as a file in %s: %v", flag, containerSecretsDir, tc.Args)
			continue
		}
		host := filepath.Join(cfg.AllocDir, cfg.Name, "secrets", strings.TrimPrefix(tc.Args[i+1], containerSecretsDir+"/"))
		b, err := os.ReadFile(host)
		if err != nil || string(b) != content {
			t.Errorf("%s: %q, %v", flag, b, err)
		}
		if fi, err := os.Stat(host); err != nil || fi.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v, %v", host, fi.Mode(), err)
		}
	}
	// Starting again (a restart) replaces the files.
	if _, err := syncerTask(s, cfg, sc, "bedrock-syncer:test", secret+"-2", port, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(cfg.AllocDir, cfg.Name, "secrets", syncerSecretFile)); string(b) != secret+"-2" {
		t.Errorf("secret not replaced: %q", b)
	}
}

// TestSyncerServiceNameLimited: a job registers only services named after
// it unless the plugin's consul.service_prefix allows more.
func TestSyncerServiceNameLimited(t *testing.T) {
	cfg, sc, port := syncerTaskConfig(t)
	for _, c := range []struct {
		prefix, service string
		ok              bool
	}{
		{"", "", true},             // web-g
		{"", "web-frontend", true}, // starts with the job id
		{"", "payments", false},
		{"shared-", "shared-cache", true},
		{"shared-", "web-g", false},
		{"*", "anything", true},
	} {
		s := &settings{consul: ConsulConfig{Address: "127.0.0.1:8500", ServicePrefix: c.prefix}}
		sc.Service = c.service
		_, err := syncerArgs(s, cfg, sc, port, nil)
		if c.ok != (err == nil) {
			t.Errorf("prefix %q, service %q: error %v", c.prefix, c.service, err)
		}
		var re *plugin.RecoverableError
		if err != nil && (!errors.As(err, &re) || re.Recoverable || !strings.Contains(err.Error(), "service_prefix")) {
			t.Errorf("prefix %q, service %q: want a clear fatal error, got %v", c.prefix, c.service, err)
		}
	}
}
