package driver

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/docker/docker/api/types/build"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// The syncer task runs this very binary (`nomad-driver-bedrock syncer ...`)
// in a container of its own, built locally from the binary. A container,
// rather than a bare child process, because it gives the syncer exactly
// what the app task already has and what a plugin restart must not break:
// it survives the plugin being killed, is re-attached from driver_state by
// the same recovery code, has its logs followed into Nomad's FIFOs, its
// exit code reported, its stats measured, and Nomad's resource limits
// applied. It uses host networking (its sync port is a Nomad host port and
// it talks to the node's Consul agent on loopback) and sees the allocation
// dir at /alloc like any task: the replicated data at /alloc/data and the
// role socket in /alloc/tmp. In a capture mode (syncer.mode "async" or
// "sync") the data lives in its /local/data instead and /alloc/data is
// where it mounts the capture file system as master (capturemount.go).

// syncerSecretEnv is where a job may put the replication secret in the
// task's environment (e.g. a template from a Nomad variable), as an
// alternative to syncer.secret. It is not passed on to the container: the
// syncer reads the secret from a file (see syncerTask).
const syncerSecretEnv = "BEDROCK_SYNC_SECRET"

var (
	syncerImageMu  sync.Mutex
	syncerImageRef string
)

// syncerImage returns the local image holding our own binary, building it
// once per binary content: FROM scratch, so no registry is involved.
func (d *Driver) syncerImage(ctx context.Context) (string, error) {
	syncerImageMu.Lock()
	defer syncerImageMu.Unlock()
	cli, err := d.client()
	if err != nil {
		return "", plugin.NewRecoverableError(err)
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("syncer image: finding our executable: %w", err)
	}
	bin, err := os.ReadFile(exe) //nolint:gosec // our own executable
	if err != nil {
		return "", fmt.Errorf("syncer image: reading %s: %w", exe, err)
	}
	sum := sha256.Sum256(bin)
	ref := "bedrock-syncer:" + hex.EncodeToString(sum[:])[:12]
	if syncerImageRef == ref {
		return ref, nil
	}
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		syncerImageRef = ref
		return ref, nil
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dockerfile := []byte("FROM scratch\nCOPY nomad-driver-bedrock /nomad-driver-bedrock\nENTRYPOINT [\"/nomad-driver-bedrock\"]\n")
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, dockerfile}, {"nomad-driver-bedrock", 0o755, bin}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return "", fmt.Errorf("syncer image: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return "", fmt.Errorf("syncer image: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return "", fmt.Errorf("syncer image: %w", err)
	}
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{
		Tags: []string{ref}, Remove: true, ForceRemove: true,
		Labels: map[string]string{labelManaged: "true", "com.bedrock-nomad.syncer": "true"},
	})
	if err != nil {
		return "", plugin.NewRecoverableError(fmt.Errorf("building the syncer image: %w", err))
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var msg struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &msg) == nil && msg.Error != "" {
			return "", fmt.Errorf("building the syncer image: %s", msg.Error)
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return "", plugin.NewRecoverableError(fmt.Errorf("building the syncer image: %w", err))
	}
	syncerImageRef = ref
	d.logger.Info("built the syncer image", "image", ref)
	return ref, nil
}

// syncerContainer turns a syncer task's config into the container task
// config that runs it, and marks the allocation gated so the app task
// waits for the role.
func (d *Driver) syncerContainer(ctx context.Context, cfg *plugin.TaskConfig, tc *TaskConfig) (*TaskConfig, error) {
	sc := tc.Syncer
	port, ok := findPort(cfg, sc.Port)
	if !ok {
		return nil, plugin.NewFatalError(fmt.Errorf("syncer.port: %q is not a port of the group's network block", sc.Port))
	}
	var metrics *plugin.PortMapping
	if sc.MetricsPort != "" {
		m, ok := findPort(cfg, sc.MetricsPort)
		if !ok {
			return nil, plugin.NewFatalError(fmt.Errorf("syncer.metrics_port: %q is not a port of the group's network block", sc.MetricsPort))
		}
		metrics = &m
	}
	secret := sc.Secret
	if secret == "" {
		secret = cfg.Env[syncerSecretEnv]
	}
	if len(secret) < 16 {
		return nil, plugin.NewFatalError(fmt.Errorf("syncer.secret: the replication secret must be at least 16 bytes (set syncer.secret, or %s in the task environment from a Nomad variable)", syncerSecretEnv))
	}
	if sc.capture() && !fuseAvailable() {
		return nil, errNoFUSE(sc.Mode)
	}
	ref, err := d.syncerImage(ctx)
	if err != nil {
		return nil, err
	}
	tc, err = syncerTask(d.settings(), cfg, sc, ref, secret, port, metrics)
	if err != nil {
		return nil, err
	}
	if sc.capture() && d.engineHasAppArmor(ctx) {
		// AppArmor's docker-default profile denies mount(2) even with
		// CAP_SYS_ADMIN; seccomp's default profile allows it then.
		tc.SecurityOpt = append(tc.SecurityOpt, "apparmor=unconfined")
	}
	return tc, nil
}

// engineHasAppArmor tells whether the Docker engine confines containers
// with AppArmor.
func (d *Driver) engineHasAppArmor(ctx context.Context) bool {
	cli, err := d.client()
	if err != nil {
		return false
	}
	info, err := cli.Info(ctx)
	if err != nil {
		d.logger.Warn("docker info failed; assuming no AppArmor", "error", err)
		return false
	}
	return hasAppArmor(info.SecurityOptions)
}

// hasAppArmor reads Docker's SecurityOptions ("name=apparmor", ...).
func hasAppArmor(opts []string) bool {
	for _, o := range opts {
		for _, kv := range strings.Split(o, ",") {
			if kv == "name=apparmor" || kv == "apparmor" {
				return true
			}
		}
	}
	return false
}

// syncerTask is the container task of a syncer: its command line, and its
// secrets as files in the task's secrets dir (mounted at /secrets, private
// to the task), never in its environment, where `docker inspect` shows
// them to anyone with access to the Docker API. The Consul token and TLS
// files of the plugin's consul block go the same way.
func syncerTask(s *settings, cfg *plugin.TaskConfig, sc *SyncerConfig, ref, secret string, port plugin.PortMapping, metrics *plugin.PortMapping) (*TaskConfig, error) {
	args, err := syncerArgs(s, cfg, sc, port, metrics)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{syncerSecretFile: []byte(secret)}
	args = append(args, "-secret-file", containerSecretsDir+"/"+syncerSecretFile)
	if tok := s.consul.Token; tok != "" {
		files[syncerTokenFile] = []byte(tok)
		args = append(args, "-consul-token-file", containerSecretsDir+"/"+syncerTokenFile)
	}
	if t := s.consul.TLS; t != nil {
		for _, f := range []struct{ src, name, flag string }{
			{t.CAFile, "bedrock-consul-ca.pem", "-consul-ca-file"},
			{t.CertFile, "bedrock-consul-cert.pem", "-consul-cert-file"},
			{t.KeyFile, "bedrock-consul-key.pem", "-consul-key-file"},
		} {
			if f.src == "" {
				continue
			}
			b, err := os.ReadFile(f.src)
			if err != nil {
				return nil, plugin.NewRecoverableError(fmt.Errorf("consul.tls: %w", err))
			}
			files[f.name] = b
			args = append(args, f.flag, containerSecretsDir+"/"+f.name)
		}
	}
	if err := writeSecrets(filepath.Join(cfg.AllocDir, cfg.Name, "secrets"), files); err != nil {
		return nil, plugin.NewRecoverableError(err)
	}
	if err := markGated(cfg.AllocDir); err != nil {
		return nil, plugin.NewRecoverableError(err)
	}
	// Nomad's task environment may carry the secret too (a template from
	// a Nomad variable): the container does not get it.
	env := make(map[string]string, len(cfg.Env))
	for k, v := range cfg.Env {
		if k != syncerSecretEnv && k != syncerConsulTokenEnv {
			env[k] = v
		}
	}
	cfg.Env = env
	tc := &TaskConfig{
		Image:       ref,
		Args:        args,
		NetworkMode: "host",
		Syncer:      sc,
	}
	if sc.capture() {
		// mount(2) of the FUSE file system; buildContainer adds the
		// device and the rshared bind of the data dir.
		tc.CapAdd = []string{"SYS_ADMIN"}
	}
	return tc, nil
}

// The syncer's secret files, in its secrets dir.
const (
	syncerSecretFile = "bedrock-sync-secret"
	syncerTokenFile  = "bedrock-consul-token"
)

// writeSecrets writes each file into dir, readable by its owner only,
// replacing what a previous start left (through a rename, so a reader
// never sees half a file).
func writeSecrets(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("secrets dir: %w", err)
	}
	for name, b := range files {
		tmp, err := os.CreateTemp(dir, "."+name+".*")
		if err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		_, werr := tmp.Write(b)
		cerr := tmp.Close()
		if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), 0o400)); err != nil {
			_ = os.Remove(tmp.Name())
			return fmt.Errorf("writing %s: %w", name, err)
		}
		if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
			_ = os.Remove(tmp.Name())
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

func findPort(cfg *plugin.TaskConfig, label string) (plugin.PortMapping, bool) {
	if cfg.Resources == nil {
		return plugin.PortMapping{}, false
	}
	for _, p := range cfg.Resources.Ports {
		if p.Label == label {
			return p, true
		}
	}
	return plugin.PortMapping{}, false
}

// syncerConsulTokenEnv is never passed to the syncer container (the token
// goes in a file); it is dropped from the task environment if set there.
const syncerConsulTokenEnv = "BEDROCK_CONSUL_TOKEN"

// syncerArgs builds the syncer's command line: the data and role socket as
// the container sees them, its replication address on the node, and the
// election in the node's Consul agent.
func syncerArgs(s *settings, cfg *plugin.TaskConfig, sc *SyncerConfig, port plugin.PortMapping, metrics *plugin.PortMapping) ([]string, error) {
	hostIP := port.HostIP
	if hostIP == "" {
		hostIP = "0.0.0.0"
	}
	service := sc.Service
	if service == "" {
		service = cfg.JobID + "-" + cfg.Group
	}
	// The syncer registers with the plugin's Consul token, which may write
	// any service: a job may only register names it owns, which by default
	// means names starting with its own id (consul.service_prefix widens
	// or narrows that; "*" allows any name).
	prefix := s.consul.ServicePrefix
	if prefix == "" {
		prefix = cfg.JobID
	}
	if prefix != "*" && !strings.HasPrefix(service, prefix) {
		return nil, plugin.NewFatalError(fmt.Errorf("syncer.service: %q is not allowed: this plugin only registers Consul services whose name starts with %q (the job's id unless the plugin's consul.service_prefix says otherwise)", service, prefix))
	}
	ns := cfg.Namespace
	if ns == "" {
		ns = "default"
	}
	args := []string{"syncer"}
	if sc.capture() {
		// The data lives in the task's own local dir; the app's data dir
		// is where the syncer mounts the capture file system as master
		// (capturemount.go).
		args = append(args,
			"-data", containerLocalDir+"/"+captureBackingDir,
			"-capture-mount", containerAllocDir+"/"+captureDirName,
			"-mode", sc.Mode)
		if sc.SyncAcks > 0 {
			args = append(args, "-sync-acks", strconv.FormatInt(sc.SyncAcks, 10))
		}
		if sc.SyncTimeout != "" {
			args = append(args, "-sync-timeout", sc.SyncTimeout)
		}
	} else {
		args = append(args, "-data", containerAllocDir+"/data")
	}
	args = append(args,
		"-listen", fmt.Sprintf("%s:%d", hostIP, port.Value),
		"-advertise", fmt.Sprintf("%s:%d", hostIP, port.Value),
		"-id", cfg.AllocID,
		"-node", cfg.NodeName,
		"-consul", s.consul.Address,
		"-namespace", ns, "-job", cfg.JobID, "-group", cfg.Group,
		"-announce", "/alloc/tmp/"+announce.SocketName,
		"-session-file", "/alloc/tmp/"+lease.SessionFileName,
		"-service", service,
	)
	if metrics != nil {
		args = append(args, "-metrics", fmt.Sprintf("%s:%d", hostIP, metrics.Value))
	}
	// The service points at the app: the group's first port (by label)
	// that is neither the sync nor the metrics port.
	if app, ok := appPort(cfg, sc); ok {
		args = append(args, "-service-port", fmt.Sprint(app.Value))
	}
	if sc.SessionTTL != "" {
		args = append(args, "-session-ttl", sc.SessionTTL)
	}
	if sc.LockDelay != "" {
		args = append(args, "-lock-delay", sc.LockDelay)
	}
	for _, tag := range sc.Tags {
		args = append(args, "-tag", tag)
	}
	return args, nil
}

func appPort(cfg *plugin.TaskConfig, sc *SyncerConfig) (plugin.PortMapping, bool) {
	var best plugin.PortMapping
	found := false
	for _, p := range cfg.Resources.Ports {
		if p.Label == sc.Port || p.Label == sc.MetricsPort {
			continue
		}
		if !found || p.Label < best.Label {
			best, found = p, true
		}
	}
	return best, found
}
