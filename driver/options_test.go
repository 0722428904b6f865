package driver_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// One test per task config option, each observed from inside the
// container (exec or the main process's output) or through the engine.

const sleepArgs = `args = ["/testapp", "sleep", "1h"]`

func TestOptionCommandAndArgs(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`command = "/testapp"`, `args = ["log", "2"]`)})
	if res := waitExit(t, c, task, 30*time.Second); !res.Successful() {
		t.Fatalf("exit %+v", res)
	}
	if err := task.Logs.WaitFor("line 2", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestOptionEntrypoint(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`entrypoint = ["/testapp", "log"]`, `args = ["4"]`)})
	if res := waitExit(t, c, task, 30*time.Second); !res.Successful() {
		t.Fatalf("exit %+v", res)
	}
	if err := task.Logs.WaitFor("line 4", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestOptionPortsWithTo(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{
		Config: appConfig(`ports = ["http"]`, `args = ["/testapp", "serve", "-addr", ":8080"]`),
		Ports:  []harness.Port{{Label: "http", To: 8080}, {Label: "unused"}},
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/", task.HostPort("http"))
	if got := httpGet(t, url, 15*time.Second); strings.TrimSpace(got) != "ok" {
		t.Fatalf("GET %s: %q", url, got)
	}
	info := containerOf(t, task)
	if len(info.HostConfig.PortBindings) != 2 { // 8080/tcp and 8080/udp
		t.Errorf("port bindings %v", info.HostConfig.PortBindings)
	}
	for p, b := range info.HostConfig.PortBindings {
		if p.Port() != "8080" || len(b) != 1 || b[0].HostIP != "127.0.0.1" || b[0].HostPort != strconv.Itoa(int(task.HostPort("http"))) {
			t.Errorf("binding %s -> %v", p, b)
		}
	}
	// NOMAD_PORT_http is the port inside the task.
	out, _ := execIn(t, c, task, "/testapp", "env")
	if !strings.Contains(out, "NOMAD_PORT_http=8080") {
		t.Errorf("env lacks NOMAD_PORT_http=8080:\n%s", out)
	}
}

func TestOptionEnv(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{
		Config: appConfig(`env = { FROM_CONFIG = "yes", GREETING = "config wins" }`, sleepArgs),
		Env:    map[string]string{"GREETING": "hello", "FROM_JOB": "job"},
	})
	out, _ := execIn(t, c, task, "/testapp", "env")
	for _, want := range []string{"FROM_CONFIG=yes", "GREETING=config wins", "FROM_JOB=job", "NOMAD_ALLOC_DIR=/alloc", "NOMAD_TASK_NAME=app"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("env lacks %q:\n%s", want, out)
		}
	}
}

func TestOptionLabels(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`labels = { team = "bedrock", tier = "db" }`, sleepArgs)})
	l := containerOf(t, task).Config.Labels
	want := map[string]string{
		"team": "bedrock", "tier": "db",
		"com.bedrock-nomad.alloc_id": task.Spec.AllocID, "com.bedrock-nomad.task": "app",
		"com.bedrock-nomad.task_id": task.ID(), "com.bedrock-nomad.job": "test", "com.bedrock-nomad.group": "g",
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("label %s = %q, want %q", k, l[k], v)
		}
	}
	// The driver's prefix is reserved.
	bad := prepare(t, c, harness.TaskSpec{Config: appConfig(`labels = { "com.bedrock-nomad.task" = "x" }`, sleepArgs)})
	if err := c.StartTask(ctxFor(t, 30*time.Second), bad); err == nil || !strings.Contains(err.Error(), "labels") {
		t.Errorf("reserved label: %v", err)
	}
}

func TestOptionNomadDirsAndData(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`data = "/data"`, sleepArgs)})
	// Host side files are visible inside.
	if err := os.WriteFile(filepath.Join(task.AllocDir(), "app", "local", "l.txt"), []byte("local"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(task.AllocDir(), "app", "secrets", "s.txt"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := execIn(t, c, task, "sh", "-c", "cat /local/l.txt /secrets/s.txt; ls -d /alloc/logs /alloc/data; echo written > /data/f.txt")
	if code != 0 || !strings.Contains(out, "localsecret") || !strings.Contains(out, "/alloc/logs") {
		t.Fatalf("exec: %d %q", code, out)
	}
	b, err := os.ReadFile(filepath.Join(task.SharedDataDir(), "f.txt"))
	if err != nil || strings.TrimSpace(string(b)) != "written" {
		t.Fatalf("data is not the allocation's alloc/data: %q %v", b, err)
	}
}

func TestOptionVolumeMounts(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "v.txt"), []byte("volume"), 0o644); err != nil {
		t.Fatal(err)
	}
	task := start(t, c, harness.TaskSpec{
		Config: appConfig(sleepArgs),
		Mounts: []plugin.Mount{{HostPath: host, TaskPath: "/vol", Readonly: true}},
	})
	out, code := execIn(t, c, task, "sh", "-c", "cat /vol/v.txt; touch /vol/x")
	if !strings.Contains(out, "volume") || code == 0 {
		t.Fatalf("read-only volume mount: %d %q", code, out)
	}
}

func TestOptionMountBlocks(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	spec := harness.TaskSpec{Config: appConfig(`
mount {
  type   = "bind"
  source = "local/sub"
  target = "/sub"
}
mount {
  type   = "tmpfs"
  target = "/scratch"
}`, sleepArgs)}
	task := prepare(t, c, spec)
	if err := os.MkdirAll(filepath.Join(task.AllocDir(), "app", "local", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.StartTask(ctxFor(t, 30*time.Second), task); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { destroy(t, c, task) })
	out, code := execIn(t, c, task, "sh", "-c", "echo hi > /sub/h.txt && grep /scratch /proc/mounts")
	if code != 0 || !strings.Contains(out, "tmpfs") {
		t.Fatalf("exec: %d %q", code, out)
	}
	if _, err := os.Stat(filepath.Join(task.AllocDir(), "app", "local", "sub", "h.txt")); err != nil {
		t.Fatal(err)
	}
	// Escaping the task dir, or absolute paths without volumes_enabled, are refused.
	for _, src := range []string{"../../etc", "/etc"} {
		bad := prepare(t, c, harness.TaskSpec{Config: appConfig(fmt.Sprintf("mount {\n source = %q\n target = \"/x\"\n}", src), sleepArgs)})
		if err := c.StartTask(ctxFor(t, 30*time.Second), bad); err == nil || !strings.Contains(err.Error(), "mount[0].source") {
			t.Errorf("mount source %q: %v", src, err)
		}
	}
}

func TestOptionWorkDirUserHostname(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`work_dir = "/tmp"`, `user = "65534:65534"`, `hostname = "bedrock-host"`, `args = ["/testapp", "whoami"]`)})
	waitExit(t, c, task, 30*time.Second)
	if err := task.Logs.WaitFor("uid=65534 gid=65534 cwd=/tmp hostname=bedrock-host", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestOptionTaskUser(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`args = ["/testapp", "whoami"]`), User: "nobody"})
	waitExit(t, c, task, 30*time.Second)
	if err := task.Logs.WaitFor("uid=65534", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestOptionNetworkModeHost(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	port, err := harness.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	task := start(t, c, harness.TaskSpec{
		Config: appConfig(`network_mode = "host"`, `ports = ["http"]`, fmt.Sprintf(`args = ["/testapp", "serve", "-addr", "127.0.0.1:%d"]`, port)),
		Ports:  []harness.Port{{Label: "http", Value: port}},
	})
	httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port), 15*time.Second)
	if m := containerOf(t, task).HostConfig.NetworkMode; m != "host" {
		t.Errorf("network mode %q", m)
	}
}

func TestOptionDNS(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(
		`dns_servers = ["10.9.8.7"]`, `dns_search_domains = ["example.internal"]`, `dns_options = ["ndots:3"]`, sleepArgs)})
	out, _ := execIn(t, c, task, "cat", "/etc/resolv.conf")
	for _, want := range []string{"nameserver 10.9.8.7", "search example.internal", "options ndots:3"} {
		if !strings.Contains(out, want) {
			t.Errorf("resolv.conf lacks %q:\n%s", want, out)
		}
	}
}

// capBit reports whether capability bit n is in the effective set line.
func capBit(t *testing.T, status string, n uint) bool {
	t.Helper()
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, "CapEff:") {
			v, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(l, "CapEff:")), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v&(1<<n) != 0
		}
	}
	t.Fatalf("no CapEff in %q", status)
	return false
}

func TestOptionCapabilities(t *testing.T) {
	requireDocker(t)
	const netRaw, sysAdmin = 13, 21
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`cap_add = ["SYS_ADMIN"]`, `cap_drop = ["NET_RAW"]`, sleepArgs)})
	out, _ := execIn(t, c, task, "cat", "/proc/self/status")
	if capBit(t, out, netRaw) || !capBit(t, out, sysAdmin) {
		t.Errorf("capabilities not applied:\n%s", out)
	}
}

func TestOptionPrivileged(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	bad := prepare(t, c, harness.TaskSpec{Config: appConfig(`privileged = true`, sleepArgs)})
	err := c.StartTask(ctxFor(t, 30*time.Second), bad)
	if err == nil || !strings.Contains(err.Error(), "privileged") || !strings.Contains(err.Error(), "allow_privileged") {
		t.Fatalf("privileged without allow_privileged: %v", err)
	}
	if plugin.IsRecoverable(err) {
		t.Error("a refused option must not be retried")
	}
	if n := containersOfAlloc(t, bad.Spec.AllocID); n != 0 {
		t.Errorf("%d containers created for a refused task", n)
	}

	allowed := startAgent(t, "allow_privileged = true\n")
	task := prepare(t, allowed, harness.TaskSpec{Config: appConfig(`privileged = true`, sleepArgs)})
	err = allowed.StartTask(ctxFor(t, 30*time.Second), task)
	if err != nil && strings.Contains(err.Error(), "operation not permitted") && strings.Contains(err.Error(), "starting container") {
		// Sandboxed engines (no CAP_SYS_ADMIN for runc) cannot run any
		// privileged container; the driver passed the option through.
		t.Skipf("this engine cannot run privileged containers: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { destroy(t, allowed, task) })
	if !containerOf(t, task).HostConfig.Privileged {
		t.Error("not privileged")
	}
}

func TestOptionInit(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`init = true`, sleepArgs)})
	out, _ := execIn(t, c, task, "cat", "/proc/1/cmdline")
	if !strings.Contains(out, "init") {
		t.Errorf("pid 1 is %q, want docker's init", out)
	}
}

func TestOptionTTY(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`tty = true`, `interactive = true`, `args = ["sh", "-c", "test -t 1 && echo on-a-tty; /testapp log 2"]`)})
	if cfg := containerOf(t, task).Config; !cfg.Tty || !cfg.OpenStdin {
		t.Errorf("tty %v interactive %v", cfg.Tty, cfg.OpenStdin)
	}
	waitExit(t, c, task, 30*time.Second)
	if err := task.Logs.WaitFor("line 2", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(task.Logs.Stdout(), "on-a-tty") {
		t.Errorf("stdout %q", task.Logs.Stdout())
	}
}

func TestOptionShmSize(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(`shm_size = 134217728`, sleepArgs)})
	out, _ := execIn(t, c, task, "df", "-k", "/dev/shm")
	if !strings.Contains(out, "131072") {
		t.Errorf("df /dev/shm: %q", out)
	}
}

func TestOptionUlimit(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	// busybox's sh reports the limits as set (a Go program raises its own
	// soft limit at startup).
	task := start(t, c, harness.TaskSpec{Config: appConfig(`ulimit = { nofile = "1024:2048" }`, `args = ["sh", "-c", "echo soft=$(ulimit -n) hard=$(ulimit -Hn)"]`)})
	waitExit(t, c, task, 30*time.Second)
	if err := task.Logs.WaitFor("soft=1024 hard=2048", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestOptionResources(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(sleepArgs), CPU: 250, MemoryMB: 64, MemoryMaxMB: 128})
	hc := containerOf(t, task).HostConfig
	if hc.CPUShares != 250 || hc.Memory != 128<<20 || hc.MemoryReservation != 64<<20 {
		t.Errorf("cpu shares %d, memory %d, reservation %d", hc.CPUShares, hc.Memory, hc.MemoryReservation)
	}
	// cpuset from the client's reserved cores.
	pinned := prepare(t, c, harness.TaskSpec{Config: appConfig(sleepArgs)})
	pinned.Config.Resources.LinuxResources.CpusetCpus = "0"
	if err := c.StartTask(ctxFor(t, 30*time.Second), pinned); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { destroy(t, c, pinned) })
	if got := containerOf(t, pinned).HostConfig.CpusetCpus; got != "0" {
		t.Errorf("cpuset %q", got)
	}
	hard := start(t, c, harness.TaskSpec{Config: appConfig(`memory_hard_limit = 96`, sleepArgs), MemoryMB: 32})
	if hc := containerOf(t, hard).HostConfig; hc.Memory != 96<<20 || hc.MemoryReservation != 32<<20 {
		t.Errorf("memory_hard_limit: memory %d reservation %d", hc.Memory, hc.MemoryReservation)
	}
}

func TestOptionForcePullAndLocalImage(t *testing.T) {
	requireDocker(t)
	// A local image whose registry does not exist: used as is, unless
	// force_pull asks the registry, which fails clearly.
	ref := "127.0.0.1:1/bedrock-local:v1"
	if err := dockerCli.ImageTag(ctxFor(t, 10*time.Second), testImage, ref); err != nil {
		t.Fatal(err)
	}
	c := startAgent(t, "")
	t.Cleanup(func() { _, _ = dockerCli.ImageRemove(context.Background(), ref, image.RemoveOptions{}) })
	start(t, c, harness.TaskSpec{Config: fmt.Sprintf("image = %q\n%s", ref, sleepArgs)})
	forced := prepare(t, c, harness.TaskSpec{Config: fmt.Sprintf("image = %q\nforce_pull = true\n%s", ref, sleepArgs)})
	err := c.StartTask(ctxFor(t, 60*time.Second), forced)
	if err == nil || !strings.Contains(err.Error(), "pulling image "+ref) {
		t.Fatalf("force_pull: %v", err)
	}
}

func TestOptionImagePullTimeout(t *testing.T) {
	requireDocker(t)
	// A "registry" that accepts connections and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = conn.Close() })
		}
	}()
	c := startAgent(t, "")
	task := prepare(t, c, harness.TaskSpec{Config: fmt.Sprintf("image = %q\nimage_pull_timeout = \"2s\"\n%s", ln.Addr().String()+"/slow:1", sleepArgs)})
	began := time.Now()
	err = c.StartTask(ctxFor(t, 60*time.Second), task)
	if err == nil || !strings.Contains(err.Error(), "image_pull_timeout") {
		t.Fatalf("pull timeout: %v", err)
	}
	if d := time.Since(began); d > 20*time.Second {
		t.Errorf("pull timeout took %v", d)
	}
	if !plugin.IsRecoverable(err) {
		t.Error("a timed out pull should be retried")
	}
}

func TestOptionAuthNeverLeaks(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	events, err := c.TaskEvents(ctxFor(t, 60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	go func() {
		for {
			ev, err := events.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, ev.GetMessage())
			mu.Unlock()
		}
	}()
	task := prepare(t, c, harness.TaskSpec{Config: fmt.Sprintf(`image = "127.0.0.1:1/private:1"
auth {
  username = "bob"
  password = "s3cr3t-pw"
  server_address = "127.0.0.1:1"
}
%s`, sleepArgs)})
	err = c.StartTask(ctxFor(t, 60*time.Second), task)
	if err == nil {
		t.Fatal("pull from a missing registry succeeded")
	}
	time.Sleep(200 * time.Millisecond)
	for _, l := range append(c.Plugin.StderrLines(), err.Error()) {
		if strings.Contains(l, "s3cr3t-pw") {
			t.Errorf("password leaked: %s", l)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range seen {
		if strings.Contains(m, "s3cr3t-pw") {
			t.Errorf("password in an event: %s", m)
		}
	}
}

func TestOptionExtraHostsSysctlReadonlyPids(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{Config: appConfig(
		`extra_hosts = ["db.internal:10.1.2.3"]`,
		`sysctl = { "net.ipv4.ip_unprivileged_port_start" = "80" }`,
		`readonly_rootfs = true`,
		`pids_limit = 64`,
		`security_opt = ["no-new-privileges"]`,
		sleepArgs)})
	out, _ := execIn(t, c, task, "sh", "-c", "cat /etc/hosts; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; touch /rootfs-write 2>&1; grep NoNewPrivs /proc/self/status")
	for _, want := range []string{"10.1.2.3\tdb.internal", "\n80\n", "Read-only file system", "NoNewPrivs:\t1"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if hc := containerOf(t, task).HostConfig; hc.PidsLimit == nil || *hc.PidsLimit != 64 {
		t.Errorf("pids limit %v", hc.PidsLimit)
	}
}
