package driver_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/testimage"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// These tests drive the built plugin binary through plugin/harness against
// the real Docker engine, with the locally built test image.

// Set up by requireDocker.
var (
	setupOnce sync.Once
	pluginErr error
	dockerErr error
	pluginBin string
	testImage string
	dockerCli *client.Client
)

// basePluginHCL keeps test images: image GC would remove them between
// tests.
const basePluginHCL = `gc {
  image = false
}
`

// requireDocker readies what the Docker-needing tests share — the plugin binary, the test
// image and a Docker client — once per test binary, and ends a test that cannot have the image
// or the engine through testutil.Missing (skipped, or failed with CI=true). The tests of the
// driver package that need no Docker (the gate, its events, the config) run either way.
func requireDocker(t testing.TB) {
	t.Helper()
	setupOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if pluginBin, pluginErr = harness.BuildPlugin(); pluginErr != nil {
			return
		}
		if testImage, dockerErr = testimage.Build(ctx); dockerErr != nil {
			return
		}
		dockerCli, dockerErr = client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	})
	if pluginErr != nil {
		t.Fatalf("driver tests need the plugin binary: %v", pluginErr)
	}
	if dockerErr != nil {
		testutil.Missing(t, "needs the test image and a Docker engine: %v", dockerErr)
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startAgent launches the plugin as a Nomad client would, with extra
// plugin config appended to basePluginHCL.
func startAgent(t *testing.T, extraHCL string) *harness.Client {
	t.Helper()
	requireDocker(t)
	return testutil.StartAgent(t, pluginBin, basePluginHCL+extraHCL, 90*time.Second)
}

// prepare lays out a task; spec.Job/Group/Task default to test values.
func prepare(t *testing.T, c *harness.Client, spec harness.TaskSpec) *harness.Task {
	t.Helper()
	if spec.Job == "" {
		spec.Job = "test"
	}
	if spec.Group == "" {
		spec.Group = "g"
	}
	if spec.Task == "" {
		spec.Task = "app"
	}
	dir := t.TempDir()
	task, err := c.PrepareTask(dir, spec)
	if err != nil {
		t.Fatalf("prepare task: %v", err)
	}
	t.Cleanup(task.Logs.Close)
	if os.Getuid() != 0 {
		// Containers run as root and leave root-owned files in the alloc
		// dir; remove them from a container before TempDir's cleanup.
		t.Cleanup(func() { removeAsRoot(dir) })
	}
	return task
}

func removeAsRoot(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := dockerCli.ContainerCreate(ctx, &container.Config{Image: testImage, Cmd: []string{"rm", "-rf", "/d/alloc"}},
		&container.HostConfig{Binds: []string{dir + ":/d"}, NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		return
	}
	defer func() {
		_ = dockerCli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
	}()
	if err := dockerCli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return
	}
	waitC, errC := dockerCli.ContainerWait(ctx, resp.ID, container.WaitConditionNotRunning)
	select {
	case <-waitC:
	case <-errC:
	}
}

// start prepares and starts a task, and destroys it at cleanup.
func start(t *testing.T, c *harness.Client, spec harness.TaskSpec) *harness.Task {
	t.Helper()
	task := prepare(t, c, spec)
	if err := c.StartTask(ctxFor(t, 60*time.Second), task); err != nil {
		t.Fatalf("start task: %v", err)
	}
	t.Cleanup(func() { destroy(t, c, task) })
	return task
}

func destroy(t *testing.T, c *harness.Client, task *harness.Task) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = c.StopAndDestroy(ctx, task, 2*time.Second, "SIGKILL")
}

// appConfig is a task config using the test image.
func appConfig(lines ...string) string {
	return fmt.Sprintf("image = %q\n", testImage) + strings.Join(lines, "\n")
}

// containerOf finds the task's container by its labels.
func containerOf(t *testing.T, task *harness.Task) container.InspectResponse {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	list, err := dockerCli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", "com.bedrock-nomad.task_id="+task.ID()))})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("want one container for task %s, found %d", task.ID(), len(list))
	}
	info, err := dockerCli.ContainerInspect(ctx, list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// containersOfAlloc counts containers labelled with the allocation.
func containersOfAlloc(t *testing.T, allocID string) int {
	t.Helper()
	list, err := dockerCli.ContainerList(ctxFor(t, 10*time.Second), container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", "com.bedrock-nomad.alloc_id="+allocID))})
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// exec runs a command in the task and returns stdout+stderr and the exit.
func execIn(t *testing.T, c *harness.Client, task *harness.Task, cmd ...string) (string, int) {
	t.Helper()
	resp, err := c.ExecTask(ctxFor(t, 30*time.Second), task, 20*time.Second, cmd...)
	if err != nil {
		t.Fatalf("exec %v: %v", cmd, err)
	}
	return string(resp.GetStdout()) + string(resp.GetStderr()), int(resp.GetResult().GetExitCode())
}

// waitExit waits for the task to exit.
func waitExit(t *testing.T, c *harness.Client, task *harness.Task, within time.Duration) *plugin.ExitResult {
	t.Helper()
	res, err := c.WaitTask(ctxFor(t, within), task)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return res
}

// httpGet fetches a URL, retrying until the server answers.
func httpGet(t *testing.T, url string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		resp, err := http.Get(url) //nolint:noctx // test
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return string(b)
			}
			lastErr = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		} else {
			lastErr = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, lastErr)
	return ""
}

func TestSmokeLifecycle(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	task := start(t, c, harness.TaskSpec{
		Config: appConfig(`args = ["/testapp", "log", "3", "-stderr"]`),
	})
	res := waitExit(t, c, task, 30*time.Second)
	if !res.Successful() {
		t.Fatalf("exit %+v", res)
	}
	if err := task.Logs.WaitFor("line 3", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := task.Logs.WaitFor("err 3", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(task.Logs.Stdout(), "err 1") || strings.Contains(task.Logs.Stderr(), "line 1") {
		t.Errorf("streams mixed: stdout %q stderr %q", task.Logs.Stdout(), task.Logs.Stderr())
	}
}

// startAgentHCL launches the plugin with exactly this plugin config.
func startAgentHCL(t *testing.T, pluginHCL string) *harness.Client {
	t.Helper()
	ctx := ctxFor(t, 90*time.Second)
	c, err := harness.StartAgent(ctx, harness.Options{Binary: pluginBin}, pluginHCL)
	if err != nil {
		t.Fatalf("agent start: %v", err)
	}
	t.Cleanup(func() { c.Stop(context.Background()) })
	return c
}
