package driver

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/fixtures"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// The task a real Nomad 2.0.5 client started (recorded with a probe
// driver whose schema is a subset of ours) decodes and maps to the
// container we would create: ports with `to`, the data bind, Nomad's
// env, labels from the list-of-one-map shape, resources.
func TestRecordedStartTask(t *testing.T) {
	raw, err := fixtures.Read("plugin-rpc/05-b-run-StartTask.bin")
	if err != nil {
		t.Fatal(err)
	}
	var req driverpb.StartTaskRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	cfg := plugin.TaskConfigFromProto(req.GetTask())
	tc, kind, err := decodeTaskConfig(cfg.DriverConfig)
	if err != nil || kind != kindApp {
		t.Fatalf("decode: %v %v", kind, err)
	}
	if tc.Image != "local/busybox:1" || tc.Labels["team"] != "bedrock" || tc.Data != "/data" || len(tc.Ports) != 1 {
		t.Errorf("config %+v", tc)
	}
	spec, err := buildContainer(&settings{}, cfg, tc, "local/busybox:1")
	if err != nil {
		t.Fatal(err)
	}
	if b := spec.host.PortBindings["8080/tcp"]; len(b) != 1 || b[0].HostPort != "21720" || b[0].HostIP != "127.0.0.1" {
		t.Errorf("http binding %v", b)
	}
	if spec.host.Memory != 64<<20 || spec.host.CPUShares != 100 {
		t.Errorf("resources: memory %d shares %d", spec.host.Memory, spec.host.CPUShares)
	}
	env := strings.Join(spec.config.Env, "\n")
	for _, want := range []string{"NOMAD_ALLOC_DIR=/alloc", "GREETING=hello", "NOMAD_PORT_http=8080"} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %s", want)
		}
	}
	var dataSrc string
	for _, m := range spec.host.Mounts {
		if m.Target == "/data" {
			dataSrc = m.Source
		}
	}
	if dataSrc != cfg.AllocDir+"/alloc/data" {
		t.Errorf("data bound from %q", dataSrc)
	}
}

// After an agent restart the handle carries no driver config; our state
// alone must be enough, and a handle from another driver is refused.
func TestRecordedRecoverHandleHasNoDriverConfig(t *testing.T) {
	raw, err := fixtures.Read("plugin-rpc/11-c-after-agent-restart-RecoverTask.bin")
	if err != nil {
		t.Fatal(err)
	}
	var req driverpb.RecoverTaskRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	h := plugin.TaskHandleFromProto(req.GetHandle())
	if len(h.Config.DriverConfig) != 0 {
		t.Fatal("the recorded handle was expected to have no driver config")
	}
	// The probe's state is not ours: refused clearly, not a panic.
	if _, err := decodeDriverState(h.DriverState); err == nil {
		t.Error("a foreign driver state decoded")
	}
}
