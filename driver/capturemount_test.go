package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"golang.org/x/sys/unix"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/testimage"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// TestSyncerModeValidated: syncer.mode takes "" (async, the default), watch,
// async or sync; any other value fails the task with a fatal error naming the
// option and the values it takes.
func TestSyncerModeValidated(t *testing.T) {
	for _, mode := range []string{"", "watch", "async", "sync"} {
		tc, kind, err := decodeTaskConfig(mp(t, map[string]any{"syncer": map[string]any{"port": "sync", "mode": mode}}))
		want := mode
		if mode == "" {
			want = "async"
		}
		if err != nil || kind != kindSyncer || tc.Syncer.Mode != want {
			t.Errorf("mode %q: %v %v %+v", mode, kind, err, tc)
			continue
		}
		if want := mode != "watch"; tc.Syncer.capture() != want {
			t.Errorf("mode %q: capture() = %v", mode, !want)
		}
	}
	for _, bad := range []string{"fuse", "ASYNC", "watcher", " sync"} {
		_, _, err := decodeTaskConfig(mp(t, map[string]any{"syncer": map[string]any{"port": "sync", "mode": bad}}))
		var re *plugin.RecoverableError
		if err == nil || !errors.As(err, &re) || re.Recoverable {
			t.Errorf("mode %q: want a fatal error, got %v", bad, err)
			continue
		}
		for _, want := range []string{"syncer.mode", `"watch"`, `"async"`, `"sync"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("mode %q: the error does not say %s: %v", bad, want, err)
			}
		}
	}
}

// TestNoFUSEError: a capture mode on a node without /dev/fuse fails the
// task for good, saying what is missing and how to do without.
func TestNoFUSEError(t *testing.T) {
	err := errNoFUSE(syncerModeSync)
	var re *plugin.RecoverableError
	if !errors.As(err, &re) || re.Recoverable {
		t.Errorf("want a fatal error: %v", err)
	}
	for _, want := range []string{"syncer.mode", "/dev/fuse", "modprobe fuse", `mode = "watch"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %s: %v", want, err)
		}
	}
}

// argAfter is the value after flag in args.
func argAfter(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

// TestCaptureContainerSpec: in a capture mode the syncer container gets
// /dev/fuse, CAP_SYS_ADMIN, an rshared bind of the allocation's data dir at
// /alloc/data, and its data from /local/data; it is not privileged. In the
// watch mode nothing of that is there.
func TestCaptureContainerSpec(t *testing.T) {
	s := &settings{consul: ConsulConfig{Address: "127.0.0.1:8500"}}
	for _, mode := range []string{"async", "sync"} {
		cfg, sc, port := syncerTaskConfig(t)
		sc.Mode = mode
		tc, err := syncerTask(s, cfg, sc, "bedrock-syncer:test", "0123456789abcdef-secret", port, nil)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := buildContainer(s, cfg, tc, "bedrock-syncer:test")
		if err != nil {
			t.Fatal(err)
		}
		args := spec.config.Cmd
		for flag, want := range map[string]string{"-data": "/local/data", "-capture-mount": "/alloc/bedrock-live", "-mode": mode} {
			if got, ok := argAfter(args, flag); !ok || got != want {
				t.Errorf("%s: %s = %q, want %q: %v", mode, flag, got, want, args)
			}
		}
		if !slices.Contains(spec.host.CapAdd, "SYS_ADMIN") || spec.host.Privileged {
			t.Errorf("%s: cap_add %v, privileged %v", mode, spec.host.CapAdd, spec.host.Privileged)
		}
		wantDev := container.DeviceMapping{PathOnHost: "/dev/fuse", PathInContainer: "/dev/fuse", CgroupPermissions: "rwm"}
		if !slices.Contains(spec.host.Devices, wantDev) {
			t.Errorf("%s: devices %+v", mode, spec.host.Devices)
		}
		var shared, alloc int
		for _, m := range spec.host.Mounts {
			switch m.Target {
			case "/alloc/bedrock-live":
				shared++
				if m.Type != mount.TypeBind || m.Source != filepath.Join(cfg.AllocDir, "alloc", "bedrock-live") ||
					m.BindOptions == nil || m.BindOptions.Propagation != mount.PropagationRShared || m.ReadOnly {
					t.Errorf("%s: the data dir bind: %+v %+v", mode, m, m.BindOptions)
				}
			case "/alloc":
				alloc++
			case "/local":
				if m.Source != filepath.Join(cfg.AllocDir, cfg.Name, "local") {
					t.Errorf("%s: /local from %s", mode, m.Source)
				}
			}
		}
		if shared != 1 || alloc != 1 {
			t.Errorf("%s: %d binds at /alloc/bedrock-live and %d at /alloc: %+v", mode, shared, alloc, spec.host.Mounts)
		}
		if spec.config.Labels[labelCapture] != mode {
			t.Errorf("%s: labels %v", mode, spec.config.Labels)
		}
	}

	// The watch mode (the default) is today's container.
	for _, mode := range []string{"", "watch"} {
		cfg, sc, port := syncerTaskConfig(t)
		sc.Mode = mode
		tc, err := syncerTask(s, cfg, sc, "bedrock-syncer:test", "0123456789abcdef-secret", port, nil)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := buildContainer(s, cfg, tc, "bedrock-syncer:test")
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := argAfter(spec.config.Cmd, "-data"); got != "/alloc/data" {
			t.Errorf("%q: -data %q", mode, got)
		}
		for _, flag := range []string{"-capture-mount", "-mode"} {
			if slices.Contains(spec.config.Cmd, flag) {
				t.Errorf("%q: %s passed: %v", mode, flag, spec.config.Cmd)
			}
		}
		if len(spec.host.CapAdd) != 0 || len(spec.host.Devices) != 0 || len(spec.host.SecurityOpt) != 0 {
			t.Errorf("%q: cap_add %v, devices %v, security_opt %v", mode, spec.host.CapAdd, spec.host.Devices, spec.host.SecurityOpt)
		}
		for _, m := range spec.host.Mounts {
			if m.Target == "/alloc/data" || m.BindOptions != nil {
				t.Errorf("%q: mount %+v", mode, m)
			}
		}
		if _, ok := spec.config.Labels[labelCapture]; ok {
			t.Errorf("%q: labels %v", mode, spec.config.Labels)
		}
	}
}

func TestHasAppArmor(t *testing.T) {
	for opts, want := range map[string]bool{
		"name=seccomp,profile=default":                   false,
		"name=apparmor|name=seccomp,profile=builtin":     true,
		"name=seccomp,profile=default|name=cgroupns":     false,
		"name=apparmor,profile=foo|name=seccomp,profile": true,
	} {
		if got := hasAppArmor(strings.Split(opts, "|")); got != want {
			t.Errorf("%s: %v", opts, got)
		}
	}
}

func TestParseMountInfo(t *testing.T) {
	lines := []string{
		`27 1 254:0 / / rw,relatime - ext4 /dev/vda rw`,
		`300 27 254:0 /tmp/a\040b/alloc/data /tmp/a\040b/alloc/data rw,relatime shared:180 - ext4 /dev/vda rw`,
		`301 300 0:99 / /tmp/a\040b/alloc/data rw,nosuid master:3 - fuse /dev/fuse rw`,
	}
	var ms []mountEntry
	for _, l := range lines {
		m, ok := parseMountInfo(l)
		if !ok {
			t.Fatalf("not parsed: %s", l)
		}
		ms = append(ms, m)
	}
	if ms[0].shared || !ms[1].shared || ms[2].shared {
		t.Errorf("shared tags: %+v", ms)
	}
	if ms[1].point != "/tmp/a b/alloc/data" || ms[2].fsType != "fuse" {
		t.Errorf("parsed: %+v", ms)
	}
	if top := topMount(ms[1:]); top.id != 301 {
		t.Errorf("top: %+v", top)
	}
	if _, ok := parseMountInfo("garbage"); ok {
		t.Error("garbage parsed")
	}
}

func TestCaptureAllocDir(t *testing.T) {
	c := container.Summary{
		Labels: map[string]string{labelCapture: "async"},
		Mounts: []container.MountPoint{
			{Type: mount.TypeBind, Source: "/n/alloc/x/alloc", Destination: "/alloc"},
			{Type: mount.TypeBind, Source: "/n/alloc/x/alloc/bedrock-live", Destination: "/alloc/bedrock-live", Propagation: mount.PropagationRShared},
		},
	}
	if got := captureAllocDir(c); got != "/n/alloc/x" {
		t.Errorf("capture syncer: %q", got)
	}
	c.Labels = map[string]string{}
	if got := captureAllocDir(c); got != "" {
		t.Errorf("not a capture syncer: %q", got)
	}
	c.Labels[labelCapture] = "sync"
	c.Mounts[1].Source = "/etc"
	if got := captureAllocDir(c); got != "" {
		t.Errorf("a data bind that is no allocation's: %q", got)
	}
}

// requireRoot skips a test that mounts.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts: needs root")
	}
}

// deadFUSEMount mounts a FUSE file system on p and closes its device
// without ever serving it: what a syncer that died as master leaves.
func deadFUSEMount(t *testing.T, p string) {
	t.Helper()
	if !fuseAvailable() {
		t.Skip("no /dev/fuse")
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	opts := "fd=" + strconv.Itoa(fd) + ",rootmode=40000,user_id=0,group_id=0"
	if err := unix.Mount("bedrock-test", p, "fuse", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		_ = unix.Close(fd)
		t.Fatalf("fuse mount: %v", err)
	}
	_ = unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Stat(p, &st); !isDeadMount(err) {
		t.Fatalf("stat of the dead mount: %v", err)
	}
}

// TestCaptureMountHostSide (root): the data dir becomes a shared mount
// point (once, however often it is prepared), a dead FUSE mount left on
// it is detached while the shared bind stays, and releasing unmounts the
// whole stack so the allocation dir can be removed.
func TestCaptureMountHostSide(t *testing.T) {
	requireRoot(t)
	alloc := t.TempDir()
	data := allocDataDir(alloc)
	t.Cleanup(func() { _, _ = unmountAll(data) })
	if err := os.MkdirAll(data, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(data, 0o777); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := prepareCaptureMount(alloc, "syncer"); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := mountsAt(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || !ms[0].shared {
		t.Fatalf("want one shared mount at %s, got %+v", data, ms)
	}
	if fi, err := os.Stat(filepath.Join(alloc, "syncer", "local", "data")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o777 {
		t.Errorf("backing dir: %v %v", fi, err)
	}

	// A syncer died as master: its FUSE mount is dead. Preparing again
	// detaches it and keeps the shared bind.
	deadFUSEMount(t, data)
	if err := prepareCaptureMount(alloc, "syncer"); err != nil {
		t.Fatal(err)
	}
	if ms, _ := mountsAt(data); len(ms) != 1 || !ms[0].shared || ms[0].fsType == "fuse" {
		t.Fatalf("after the dead mount: %+v", ms)
	}

	// Destroy: a dead FUSE mount on the shared bind; both go.
	deadFUSEMount(t, data)
	n, err := releaseCaptureMount(alloc)
	if err != nil || n != 2 {
		t.Fatalf("release: %d mounts, %v", n, err)
	}
	if ms, _ := mountsAt(data); len(ms) != 0 {
		t.Fatalf("mounts left: %+v", ms)
	}
	if n, err := releaseCaptureMount(alloc); err != nil || n != 0 {
		t.Errorf("a second release: %d, %v", n, err)
	}
	if err := os.RemoveAll(filepath.Join(alloc, "alloc")); err != nil {
		t.Errorf("the alloc dir cannot be removed: %v", err)
	}
	// Nothing there at all: no error.
	if n, err := releaseCaptureMount(alloc); err != nil || n != 0 {
		t.Errorf("release of a removed dir: %d, %v", n, err)
	}
}

// TestCaptureMountPropagates (root, Docker): with the container spec the
// driver builds for a capture syncer, a mount the container makes onto
// /alloc/data reaches the host's data dir, and so a container started
// afterwards that binds that dir, as the app does; releasing the mounts
// afterwards leaves a removable allocation dir. A tmpfs stands in for the
// syncer's FUSE mount.
func TestCaptureMountPropagates(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	image, err := testimage.Build(ctx)
	if err != nil {
		testutil.Missing(t, "needs the test image and a Docker engine: %v", err)
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		testutil.Missing(t, "needs a Docker engine: %v", err)
	}
	defer func() { _ = cli.Close() }()
	info, err := cli.Info(ctx)
	if err != nil {
		testutil.Missing(t, "needs a Docker engine: %v", err)
	}

	cfg, sc, port := syncerTaskConfig(t)
	cfg.AllocID = "capture-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	sc.Mode = syncerModeAsync
	s := &settings{consul: ConsulConfig{Address: "127.0.0.1:8500"}}
	tc, err := syncerTask(s, cfg, sc, image, "0123456789abcdef-secret", port, nil)
	if err != nil {
		t.Fatal(err)
	}
	if hasAppArmor(info.SecurityOptions) {
		tc.SecurityOpt = append(tc.SecurityOpt, "apparmor=unconfined")
	}
	spec, err := buildContainer(s, cfg, tc, image)
	if err != nil {
		t.Fatal(err)
	}
	data := allocDataDir(cfg.AllocDir)
	if err := prepareCaptureMount(cfg.AllocDir, cfg.Name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = releaseCaptureMount(cfg.AllocDir) })

	run := func(name string, cc *container.Config, hc *container.HostConfig) string {
		t.Helper()
		resp, err := cli.ContainerCreate(ctx, cc, hc, nil, nil, name+"-"+cfg.AllocID)
		if err != nil {
			t.Fatalf("creating %s: %v", name, err)
		}
		t.Cleanup(func() {
			_ = cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
		})
		if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
			t.Fatalf("starting %s: %v", name, err)
		}
		return resp.ID
	}

	// The "syncer": the driver's spec, another command.
	spec.config.Entrypoint = nil
	spec.config.Cmd = []string{"sh", "-c", "mount -t tmpfs tmpfs /alloc/bedrock-live && echo hi > /alloc/bedrock-live/x && exec sleep 300"}
	syncerID := run("syncer", spec.config, spec.host)
	var got []byte
	testutil.WaitFor(t, 20*time.Second, func() bool {
		got, err = os.ReadFile(filepath.Join(data, "x"))
		return err == nil
	})
	if string(got) != "hi\n" {
		t.Fatalf("host sees %q", got)
	}
	if ms, _ := mountsAt(data); len(ms) != 2 || topMount(ms).fsType != "tmpfs" {
		t.Errorf("host mounts at the data dir: %+v", ms)
	}

	// The "app", started afterwards, binds the host's data dir.
	appID := run("app", &container.Config{Image: image, Cmd: []string{"cat", "/data/x"}},
		&container.HostConfig{NetworkMode: "none", Mounts: []mount.Mount{{Type: mount.TypeBind, Source: data, Target: "/data"}}})
	waitC, errC := cli.ContainerWait(ctx, appID, container.WaitConditionNotRunning)
	select {
	case w := <-waitC:
		if w.StatusCode != 0 {
			t.Errorf("the app cannot read the syncer's mount: exit %d", w.StatusCode)
		}
	case err := <-errC:
		t.Fatal(err)
	}
	logs, err := cli.ContainerLogs(ctx, appID, container.LogsOptions{ShowStdout: true})
	if err == nil {
		var out strings.Builder
		_, _ = stdcopy.StdCopy(&out, &out, logs)
		_ = logs.Close()
		if out.String() != "hi\n" {
			t.Errorf("the app reads %q", out.String())
		}
	}

	// The syncer goes; releasing leaves nothing mounted, and the file the
	// tmpfs held is not in the plain directory.
	if err := cli.ContainerRemove(ctx, syncerID, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if n, err := releaseCaptureMount(cfg.AllocDir); err != nil || n != 2 {
		t.Errorf("release: %d mounts, %v", n, err)
	}
	if ms, _ := mountsAt(data); len(ms) != 0 {
		t.Errorf("mounts left: %+v", ms)
	}
	if _, err := os.Stat(filepath.Join(data, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("x after the unmount: %v", err)
	}
}

// TestSyncOptions: sync_acks and sync_timeout reach the syncer in sync mode,
// are refused with a clear error out of range, and mean nothing (so are
// refused) in the other modes.
func TestSyncOptions(t *testing.T) {
	tc, _, err := decodeTaskConfig(mp(t, map[string]any{"syncer": map[string]any{"port": "sync", "mode": "sync", "sync_acks": 2, "sync_timeout": "3s"}}))
	if err != nil || tc.Syncer.SyncAcks != 2 || tc.Syncer.SyncTimeout != "3s" {
		t.Fatalf("%v %+v", err, tc)
	}
	for _, bad := range []map[string]any{
		{"mode": "sync", "sync_acks": -1},
		{"mode": "sync", "sync_acks": 40},
		{"mode": "sync", "sync_timeout": "soon"},
		{"mode": "sync", "sync_timeout": "1ms"},
		{"sync_acks": 2},
		{"mode": "watch", "sync_timeout": "3s"},
	} {
		bad["port"] = "sync"
		_, _, err := decodeTaskConfig(mp(t, map[string]any{"syncer": bad}))
		var re *plugin.RecoverableError
		if err == nil || !errors.As(err, &re) || re.Recoverable || !strings.Contains(err.Error(), "syncer.sync_") {
			t.Errorf("%v: want a fatal error naming the option, got %v", bad, err)
		}
	}
}
