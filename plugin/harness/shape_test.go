package harness

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/fixtures"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/hclspec"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// The recording plugin's task schema (fixtures README).
var probeSchema = hclspec.Object(map[string]*hclspec.Spec{
	"image":  hclspec.RequiredAttr("image", "string"),
	"ports":  hclspec.Attr("ports", "list(string)"),
	"args":   hclspec.Attr("args", "list(string)"),
	"data":   hclspec.Attr("data", "string"),
	"labels": hclspec.Attr("labels", "list(map(string))"),
})

func fieldSet(m protoreflect.Message) []string {
	var out []string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		out = append(out, string(fd.Name()))
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() {
			for _, sub := range fieldSet(v.Message()) {
				out = append(out, string(fd.Name())+"."+sub)
			}
		}
		return true
	})
	sort.Strings(out)
	return out
}

func envKeys(env map[string]string) []string {
	var out []string
	for k := range env {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestStartTaskShapeMatchesNomad builds the recorded job's task with the
// harness and compares it with what Nomad 2.0.5 really sent: the same
// fields filled, the same environment names, and byte-identical msgpack for
// the driver config (which proves the list-of-one-map detour).
func TestStartTaskShapeMatchesNomad(t *testing.T) {
	raw, err := fixtures.Read("plugin-rpc/05-b-run-StartTask.bin")
	if err != nil {
		t.Fatal(err)
	}
	var want driverpb.StartTaskRequest
	if err := proto.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	spec, err := hclspec.ToHCLDec(probeSchema)
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{TaskSpec: spec}
	w := want.GetTask()
	task, err := c.PrepareTask(t.TempDir(), TaskSpec{
		Job: "probe", Group: "g", Task: "app", AllocID: w.GetAllocId(),
		Config: `
        image  = "local/busybox:1"
        ports  = ["http"]
        args   = ["-c", "echo ${NOMAD_ALLOC_ID}"]
        data   = "/data"
        labels = { team = "bedrock" }
`,
		Env:      map[string]string{"GREETING": "hello"},
		Ports:    []Port{{Label: "http", To: 8080, Value: 21720}, {Label: "sync", Value: 21960}},
		CPU:      100,
		MemoryMB: 64,
		NodeName: "client1", NodeID: w.GetNodeId(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer task.Logs.Close()
	got := task.Config

	if !bytes.Equal(got.GetMsgpackDriverConfig(), w.GetMsgpackDriverConfig()) {
		t.Errorf("driver config msgpack differs:\n got %q\nwant %q", got.GetMsgpackDriverConfig(), w.GetMsgpackDriverConfig())
	}
	if g, wnt := envKeys(got.GetEnv()), envKeys(w.GetEnv()); !slices.Equal(g, wnt) {
		t.Errorf("env names differ:\n got %v\nwant %v", g, wnt)
	}
	for _, k := range []string{"NOMAD_ADDR_http", "NOMAD_PORT_http", "NOMAD_HOST_PORT_sync", "NOMAD_ALLOC_NAME", "NOMAD_ALLOC_DIR"} {
		if got.GetEnv()[k] != w.GetEnv()[k] {
			t.Errorf("env %s = %q, Nomad sent %q", k, got.GetEnv()[k], w.GetEnv()[k])
		}
	}
	if g, wnt := fieldSet(got.ProtoReflect()), fieldSet(w.ProtoReflect()); !slices.Equal(g, wnt) {
		t.Errorf("filled fields differ:\n got %v\nwant %v", g, wnt)
	}
	if !proto.Equal(got.GetResources().GetPorts()[0], w.GetResources().GetPorts()[0]) ||
		!proto.Equal(got.GetResources().GetAllocatedResources(), w.GetResources().GetAllocatedResources()) {
		t.Errorf("resources differ:\n got %v\nwant %v", got.GetResources(), w.GetResources())
	}
	if filepath.Base(got.GetStdoutPath()) != filepath.Base(w.GetStdoutPath()) ||
		!strings.HasPrefix(got.GetStdoutPath(), got.GetAllocDir()+"/alloc/logs/") {
		t.Errorf("stdout fifo %q", got.GetStdoutPath())
	}
	if st, err := os.Stat(got.GetStdoutPath()); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("stdout fifo not created: %v", err)
	}
}

// A map-valued option declared map(string) is refused, as Nomad refuses it.
func TestMapOptionMustBeListOfMap(t *testing.T) {
	spec, err := hclspec.ToHCLDec(hclspec.Object(map[string]*hclspec.Spec{"labels": hclspec.Attr("labels", "map(string)")}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = EncodeHCL(spec, "task config", `labels = { team = "bedrock" }`, nil)
	if err == nil || !strings.Contains(err.Error(), "map of string required") {
		t.Fatalf("want Nomad's refusal, got %v", err)
	}
}

func TestParseHandshake(t *testing.T) {
	good := "1|2|unix|/tmp/plugin123|grpc|\n"
	if addr, err := ParseHandshake(good); err != nil || addr != "unix:/tmp/plugin123" {
		t.Fatalf("%q: %v", addr, err)
	}
	for _, bad := range []string{
		"hello world", "1|1|unix|/x|grpc|", "2|2|unix|/x|grpc|", "1|2|unix|/x|netrpc|", "1|2|unix|/x|grpc|CERT", "1|2|pipe|/x|grpc|",
	} {
		if _, err := ParseHandshake(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
