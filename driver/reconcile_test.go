package driver_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// Containers labelled by bedrock for this node that no task owns are
// removed after two passes; other nodes' containers and owned ones stay.
func TestDanglingContainersReconciled(t *testing.T) {
	requireDocker(t)
	c := startAgentHCL(t, `gc {
  image = false
  dangling_containers {
    period         = "1s"
    creation_grace = "0s"
  }
}`)
	node := "node-" + harness.NewAllocID()[:8]
	owned := start(t, c, harness.TaskSpec{Config: appConfig(sleepArgs), NodeID: node})

	ctx := ctxFor(t, 60*time.Second)
	mk := func(nodeLabel string) string {
		t.Helper()
		resp, err := dockerCli.ContainerCreate(ctx, &container.Config{
			Image: testImage, Cmd: []string{"/testapp", "sleep", "1h"},
			Labels: map[string]string{"com.bedrock-nomad.managed": "true", "com.bedrock-nomad.node_id": nodeLabel,
				"com.bedrock-nomad.task_id": "lost/app/1"},
		}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = dockerCli.ContainerRemove(ctx, resp.ID, container.RemoveOptions{Force: true}) })
		if err := dockerCli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		return resp.ID
	}
	orphan := mk(node)
	foreign := mk("some-other-node")

	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := dockerCli.ContainerInspect(ctx, orphan)
		if cerrdefs.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphan was not removed")
		}
		time.Sleep(250 * time.Millisecond)
	}
	if _, err := dockerCli.ContainerInspect(ctx, foreign); err != nil {
		t.Errorf("another node's container was touched: %v", err)
	}
	if info := containerOf(t, owned); !info.State.Running {
		t.Error("the owned container was touched")
	}
}

// The fingerprint reports the engine version and runtimes.
func TestFingerprintAttributes(t *testing.T) {
	requireDocker(t)
	c := startAgent(t, "")
	s, err := c.Fingerprint(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	fp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if fp.GetHealth() != driverpb.FingerprintResponse_HEALTHY {
		t.Fatalf("%v %s", fp.GetHealth(), fp.GetHealthDescription())
	}
	v, err := dockerCli.ServerVersion(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	attrs := fp.GetAttributes()
	if got := attrs["driver.bedrock.docker.version"].GetStringVal(); got != v.Version {
		t.Errorf("docker version %q, engine says %q", got, v.Version)
	}
	if attrs["driver.bedrock.docker.runtimes"].GetStringVal() == "" || attrs["driver.bedrock.version"].GetStringVal() == "" {
		t.Errorf("attributes %v", attrs)
	}
}

// Image GC removes only images bedrock pulled: a locally built image
// survives its last task by more than image_delay.
func TestImageGCKeepsLocalImages(t *testing.T) {
	requireDocker(t)
	ref := "bedrock-gc-local:" + harness.NewAllocID()[:8]
	ctx := ctxFor(t, 60*time.Second)
	if err := dockerCli.ImageTag(ctx, testImage, ref); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dockerCli.ImageRemove(context.Background(), ref, image.RemoveOptions{}) })
	c := startAgentHCL(t, `gc {
  image       = true
  image_delay = "500ms"
}`)
	task := start(t, c, harness.TaskSpec{Config: fmt.Sprintf("image = %q\n%s", ref, sleepArgs)})
	if err := c.StopAndDestroy(ctx, task, time.Second, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if _, err := dockerCli.ImageInspect(ctx, ref); err != nil {
		t.Errorf("a local image was garbage collected: %v", err)
	}
}
