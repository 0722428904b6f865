package plugin_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/fixtures"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/basepb"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

func load(t *testing.T, name string, m proto.Message) {
	t.Helper()
	b, err := fixtures.Read("plugin-rpc/" + name + ".bin")
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		t.Fatalf("%s does not decode with our definitions: %v", name, err)
	}
}

// probeConfig is the recording plugin's task config schema.
type probeConfig struct {
	Image  string            `msgpack:"image"`
	Ports  []string          `msgpack:"ports"`
	Args   []string          `msgpack:"args"`
	Data   string            `msgpack:"data"`
	Labels map[string]string `msgpack:"labels"`
}

func TestFixtureSetConfig(t *testing.T) {
	for _, name := range []string{"01-a-validate-SetConfig", "02-a-validate-SetConfig", "14-c-after-agent-restart-new-launch-SetConfig"} {
		var req basepb.SetConfigRequest
		load(t, name, &req)
		if req.GetNomadConfig() != nil {
			t.Errorf("%s: validation launches carry no nomad_config", name)
		}
		if req.GetPluginApiVersion() != plugin.APIVersion {
			t.Errorf("%s: api version %q", name, req.GetPluginApiVersion())
		}
	}
	for _, name := range []string{"03-b-run-SetConfig", "16-d-after-plugin-crash-SetConfig"} {
		var req basepb.SetConfigRequest
		load(t, name, &req)
		d := req.GetNomadConfig().GetDriver()
		if d.GetClientMinPort() != 14000 || d.GetClientMaxPort() != 14512 {
			t.Errorf("%s: port range %d-%d", name, d.GetClientMinPort(), d.GetClientMaxPort())
		}
		var cfg struct {
			Greeting string `msgpack:"greeting"`
		}
		if err := plugin.DecodeConfig(req.GetMsgpackConfig(), &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.Greeting != "hi" {
			t.Errorf("%s: greeting %q, want hi", name, cfg.Greeting)
		}
	}
}

func TestFixtureStartTask(t *testing.T) {
	var req driverpb.StartTaskRequest
	load(t, "05-b-run-StartTask", &req)
	tc := plugin.TaskConfigFromProto(req.GetTask())
	if tc.Name != "app" || tc.Group != "g" || tc.JobID != "probe" || tc.Namespace != "default" || tc.NodeName != "client1" {
		t.Errorf("identity fields: %+v", tc)
	}
	if tc.AllocID != "2a30bb09-bd7e-ed89-9efc-74165443b3ae" || tc.ID != tc.AllocID+"/app/0f6ed413" {
		t.Errorf("ids: %q %q", tc.AllocID, tc.ID)
	}
	if tc.Env["NOMAD_ALLOC_DIR"] != "/alloc" || tc.Env["NOMAD_PORT_http"] != "8080" || tc.Env["GREETING"] != "hello" {
		t.Errorf("env: %v", tc.Env)
	}
	if tc.Resources.CPUShares != 100 || tc.Resources.MemoryMB != 64 || tc.Resources.Linux.MemoryLimitBytes != 64<<20 {
		t.Errorf("resources: %+v", tc.Resources)
	}
	if len(tc.Resources.Ports) != 2 || tc.Resources.Ports[0].Label != "http" || tc.Resources.Ports[0].To != 8080 || tc.Resources.Ports[0].HostIP != "127.0.0.1" {
		t.Errorf("ports: %+v", tc.Resources.Ports)
	}
	if tc.StdoutPath != tc.AllocDir+"/alloc/logs/.app.stdout.fifo" || tc.StderrPath != tc.AllocDir+"/alloc/logs/.app.stderr.fifo" {
		t.Errorf("fifos: %q %q", tc.StdoutPath, tc.StderrPath)
	}
	var cfg probeConfig
	if err := plugin.DecodeConfig(tc.DriverConfig, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Image != "local/busybox:1" || cfg.Data != "/data" || cfg.Labels["team"] != "bedrock" ||
		len(cfg.Ports) != 1 || cfg.Ports[0] != "http" || len(cfg.Args) != 2 || cfg.Args[1] != "echo "+tc.AllocID {
		t.Errorf("driver config: %+v", cfg)
	}
}

func TestFixtureRecoverTaskHasNoDriverConfig(t *testing.T) {
	for _, name := range []string{"11-c-after-agent-restart-RecoverTask", "18-d-after-plugin-crash-RecoverTask"} {
		var req driverpb.RecoverTaskRequest
		load(t, name, &req)
		h := plugin.TaskHandleFromProto(req.GetHandle())
		if h.Version != 1 || h.State != plugin.TaskStateRunning || string(h.DriverState) != "probe-state" {
			t.Errorf("%s: handle %+v", name, h)
		}
		if len(h.Config.DriverConfig) != 0 {
			t.Errorf("%s: expected an empty msgpack_driver_config", name)
		}
		if h.Config.ID == "" || h.Config.AllocDir == "" || len(h.Config.Env) == 0 {
			t.Errorf("%s: the rest of the config must be there", name)
		}
	}
}

func TestFixtureSmallRequests(t *testing.T) {
	var stats driverpb.TaskStatsRequest
	load(t, "06-b-run-TaskStats", &stats)
	if stats.GetCollectionInterval().AsDuration() != time.Second {
		t.Errorf("stats interval %v", stats.GetCollectionInterval().AsDuration())
	}
	var sig driverpb.SignalTaskRequest
	load(t, "08-b-run-SignalTask", &sig)
	if sig.GetSignal() != "SIGUSR1" {
		t.Errorf("signal %q", sig.GetSignal())
	}
	var exec driverpb.ExecStreamRequest
	load(t, "09-b-run-ExecTaskStreaming-setup", &exec)
	if c := exec.GetSetup().GetCommand(); len(c) != 2 || c[0] != "/bin/echo" || c[1] != "hi" || exec.GetSetup().GetTty() {
		t.Errorf("exec setup %v", exec.GetSetup())
	}
	var stop driverpb.StopTaskRequest
	load(t, "21-d-after-plugin-crash-StopTask", &stop)
	if stop.GetTimeout().AsDuration() != 7*time.Second || stop.GetSignal() != "SIGINT" {
		t.Errorf("stop %v %q", stop.GetTimeout().AsDuration(), stop.GetSignal())
	}
	var destroy driverpb.DestroyTaskRequest
	load(t, "22-d-after-plugin-crash-DestroyTask", &destroy)
	if !destroy.GetForce() {
		t.Error("destroy must be forced")
	}
	var wait driverpb.WaitTaskRequest
	load(t, "07-b-run-WaitTask", &wait)
	if wait.GetTaskId() == "" {
		t.Error("wait without task id")
	}
	for _, empty := range []string{"04-b-run-Init", "23-d-after-plugin-crash-Shutdown"} {
		var m driverpb.InitRequest
		load(t, empty, &m)
	}
}
