package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

const liveSecret = "0123456789abcdef-status-test"

// TestStatusLive runs three real syncer processes of the plugin binary in
// the Consul mode the driver uses, on three Consul client agents, and
// checks what `status` reports as the group goes from healthy to degraded
// (a clone killed) to no master (the others stopped), in process and
// through the binary's `status` command; then it checks the listing of
// every group of a job, Nomad's allocations, and the error exits.
func TestStatusLive(t *testing.T) {
	testutil.RequireConsul(t)
	bin, err := harness.BuildPlugin()
	if err != nil {
		t.Fatalf("build the plugin binary: %v", err)
	}
	c := consul.Start(t, consul.WithClients(3))
	client := c.Client()
	addr := c.HTTPAddr()
	base := []string{"-consul", addr, "-job", "web"}

	var procs []*syncerProc
	for i := range 3 {
		procs = append(procs, startSyncer(t, bin, c.Clients[i], fmt.Sprintf("alloc%d", i), 8080+i))
	}

	var master *syncerProc
	t.Run("healthy: one master, two caught-up clones", func(t *testing.T) {
		// nobody may be master yet: wait for the lock, then write through the master
		holder := waitHolder(t, client, 30*time.Second)
		for _, p := range procs {
			if p.id == holder.Info.ID {
				master = p
			}
		}
		if master == nil {
			t.Fatalf("the lock holder %q is none of the syncers", holder.Info.ID)
		}
		// Write once the master watches its tree (it registers its service
		// as master after its first scan): a file there before the scan is
		// part of the clones' initial copy, and no position moves for it.
		waitReport(t, base, 30*time.Second, "the lock holder serving as master", func(r *Report) bool {
			return len(r.Groups) == 1 && len(r.Groups[0].Instances) > 0 && r.Groups[0].Instances[0].ID == master.id &&
				r.Groups[0].Instances[0].ServiceRole == string(RoleMaster)
		})
		if err := os.WriteFile(filepath.Join(master.data, "hello.txt"), []byte("replicate me"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := waitReport(t, base, 45*time.Second, "healthy with the write replicated to both clones", func(r *Report) bool {
			if r.Verdict != Healthy || len(r.Groups) != 1 || len(r.Groups[0].Instances) != 3 {
				return false
			}
			for _, in := range r.Groups[0].Instances {
				if in.Position.Seq == 0 || (in.Role == RoleClone && (in.LagOps == nil || *in.LagOps != 0)) ||
					(in.Health != consulapi.HealthPassing && in.Health != HealthNoCheck) || in.ServiceRole != string(in.Role) {
					return false
				}
			}
			return true
		})
		g := r.Groups[0]
		assertMasterIsHolder(t, client, g)
		if g.Name != "g" || g.KeyPrefix != "bedrock/default/web/g" || g.Service != "web-g" {
			t.Errorf("group = %q at %q, service %q", g.Name, g.KeyPrefix, g.Service)
		}
		if m := g.Instances[0]; m.SyncAddress != master.listen || m.Node != master.node {
			t.Errorf("master row %+v, want sync address %s on %s", m, master.listen, master.node)
		}
		host, _, _ := net.SplitHostPort(master.listen)
		if want := net.JoinHostPort(host, strconv.Itoa(master.port)); g.Instances[0].AppAddress != want {
			t.Errorf("master's app address %q, want %q (its service registration)", g.Instances[0].AppAddress, want)
		}
		for _, in := range g.Instances[1:] {
			if in.Role != RoleClone || !in.Live || !in.CaughtUp || in.Term != g.Term {
				t.Errorf("clone row %+v, want a live caught-up clone at term %d", in, g.Term)
			}
		}
		if r.ExitCode != ExitHealthy {
			t.Errorf("exit code %d, want %d", r.ExitCode, ExitHealthy)
		}
		out := runBinary(t, bin, ExitHealthy, base...)
		if !strings.HasSuffix(out, "\nverdict: healthy\n") || !strings.Contains(out, "g: healthy: 1 master, 2 live caught-up clones, 3 instances") {
			t.Errorf("binary's table:\n%s", out)
		}
		t.Logf("status table:\n%s", out)
	})
	if master == nil {
		t.FailNow()
	}

	var killed *syncerProc
	t.Run("degraded: a killed clone's session ends", func(t *testing.T) {
		for _, p := range procs {
			if p != master {
				killed = p
				break
			}
		}
		killed.kill()
		r := waitReport(t, base, 30*time.Second, "the killed clone shown down", func(r *Report) bool {
			return r.Verdict == Degraded && rowOf(r.Groups[0], killed.id).Role == RoleDown
		})
		g := r.Groups[0]
		assertMasterIsHolder(t, client, g)
		if g.Master != master.id {
			t.Errorf("master changed to %s although only a clone died", g.Master)
		}
		if in := rowOf(g, killed.id); in.Live {
			t.Errorf("killed clone row %+v, want not live", in)
		}
		if c := Count(&g); c != (Counts{Masters: 1, CaughtUpClones: 1, Instances: 2}) {
			t.Errorf("counts = %+v", c)
		}
		if r.ExitCode != ExitDegraded {
			t.Errorf("exit code %d, want %d", r.ExitCode, ExitDegraded)
		}
		out := runBinary(t, bin, ExitDegraded, append(base, "-json")...)
		var fromBin Report
		if err := json.Unmarshal([]byte(out), &fromBin); err != nil || fromBin.Verdict != Degraded {
			t.Errorf("binary's JSON (%v):\n%s", err, out)
		}
		t.Logf("status table:\n%s", runBinary(t, bin, ExitDegraded, base...))
	})

	t.Run("no master: every syncer stopped", func(t *testing.T) {
		for _, p := range procs { // clones first, so that none takes over
			if p != master && p != killed {
				p.stop(t)
			}
		}
		master.stop(t)
		r := waitReport(t, base, 30*time.Second, "no master", func(r *Report) bool { return r.Verdict == NoMaster })
		g := r.Groups[0]
		assertMasterIsHolder(t, client, g)
		if g.Master != "" || r.ExitCode != ExitNoMaster {
			t.Errorf("master %q exit %d, want none and %d", g.Master, r.ExitCode, ExitNoMaster)
		}
		for _, in := range g.Instances {
			if in.Role == RoleMaster || in.Role == RoleClone {
				t.Errorf("row %+v after every syncer stopped", in)
			}
		}
		out := runBinary(t, bin, ExitNoMaster, base...)
		if !strings.HasSuffix(out, "\nverdict: no master\n") || !strings.Contains(out, "master none") {
			t.Errorf("binary's table:\n%s", out)
		}
	})

	t.Run("every group of a job, with Nomad's allocations", func(t *testing.T) {
		writeShop(t, client)
		nomad := fakeNomad(t)
		args := []string{"-consul", addr, "-job", "shop", "-nomad", nomad}
		code, r, out, errOut := runStatus(t, args...)
		if code != ExitNoMaster || r.Verdict != NoMaster || len(r.Groups) != 2 || r.Groups[0].Name != "api" || r.Groups[1].Name != "db" {
			t.Fatalf("exit %d, report %+v; stderr %s\n%s", code, r, errOut, out)
		}
		api := r.Groups[0]
		var got []string
		for _, in := range api.Instances {
			got = append(got, fmt.Sprintf("%s:%s:%s:%s", in.ID, in.Role, in.Node, in.Nomad))
		}
		want := "a1:master:n1:running a2:clone:n2:running a4:absent:n4:running a3:down:n3:failed"
		if strings.Join(got, " ") != want {
			t.Errorf("api rows = %s, want %s", strings.Join(got, " "), want)
		}
		if api.Verdict != Degraded || api.Term != 1 || r.Groups[1].Verdict != NoMaster {
			t.Errorf("api %s term %d, db %s", api.Verdict, api.Term, r.Groups[1].Verdict)
		}
		code, r, _, _ = runStatus(t, append(args, "-group", "api")...)
		if code != ExitDegraded || len(r.Groups) != 1 || r.Nomad != nomad {
			t.Errorf("-group api: exit %d, %d groups, nomad %q", code, len(r.Groups), r.Nomad)
		}
		// Nomad down: a warning, Consul's view still decides
		code, r, _, _ = runStatus(t, "-consul", addr, "-job", "shop", "-group", "api", "-nomad", "http://127.0.0.1:1", "-timeout", "3s")
		if code != ExitDegraded || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "NOMAD_ADDR") {
			t.Errorf("Nomad unreachable: exit %d, warnings %q", code, r.Warnings)
		}
	})

	t.Run("errors: unknown job or group, unreachable Consul", func(t *testing.T) {
		cases := []struct {
			name string
			args []string
			want []string
		}{
			{"unknown job", []string{"-consul", addr, "-job", "nope"}, []string{`no Bedrock election keys found for job "nope"`, "bedrock/default/nope/", "-job and -namespace"}},
			{"unknown group", []string{"-consul", addr, "-job", "shop", "-group", "web"}, []string{`group "web"`, "groups of the job: api, db", "check -group"}},
			{"unreachable consul", []string{"-consul", "127.0.0.1:1", "-job", "web"}, []string{"cannot reach Consul at 127.0.0.1:1", "CONSUL_HTTP_ADDR"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				code, _, out, errOut := runStatus(t, tc.args...)
				if code != ExitError || out != "" {
					t.Errorf("exit %d stdout %q, want %d and nothing", code, out, ExitError)
				}
				for _, w := range tc.want {
					if !strings.Contains(errOut, w) {
						t.Errorf("stderr lacks %q: %s", w, errOut)
					}
				}
			})
		}
		runBinary(t, bin, ExitError, "-consul", "127.0.0.1:1", "-job", "web")
	})
}

// --- syncer processes ---

type syncerProc struct {
	id, node, data, listen string
	port                   int // the app's port it registers
	cmd                    *exec.Cmd
	logs                   *testutil.Buffer
	done                   chan struct{}
}

// startSyncer runs `nomad-driver-bedrock syncer -consul ...` the way the
// driver runs a syncer task, against one Consul client agent.
func startSyncer(t *testing.T, bin string, node *consul.Node, id string, servicePort int) *syncerProc {
	t.Helper()
	dir := t.TempDir()
	p := &syncerProc{id: id, node: node.Name, data: filepath.Join(dir, "data"), listen: freeAddr(t), port: servicePort, logs: &testutil.Buffer{}, done: make(chan struct{})}
	if err := os.MkdirAll(p.data, 0o755); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "syncer", "-consul", node.HTTPAddr, "-data", p.data, "-listen", p.listen,
		"-job", "web", "-group", "g", "-id", id, "-node", node.Name, "-announce", filepath.Join(dir, "role.sock"),
		"-service-port", fmt.Sprint(servicePort))
	p.cmd.Env = append(os.Environ(), "BEDROCK_SYNC_SECRET="+liveSecret)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("--- %s logs (tail) ---\n%s", id, tail(p.logs.String(), 4000))
		}
	})
	return p
}

// stop ends the syncer gracefully (SIGTERM: it withdraws its candidacy and
// releases the lock), SIGKILL after a bound.
func (p *syncerProc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Errorf("%s did not stop within 15s of SIGTERM", p.id)
		p.kill()
	}
}

// kill ends the syncer like a crash: its session is left to expire.
func (p *syncerProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// --- reading status ---

// runStatus runs the command in process with -json and decodes the report.
func runStatus(t *testing.T, args ...string) (int, *Report, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := Run(ctx, append(args, "-json"), &out, &errOut)
	var r Report
	if out.Len() > 0 {
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("status -json printed no JSON (%v):\n%s", err, out.String())
		}
	}
	return code, &r, out.String(), errOut.String()
}

// waitReport polls status until ok accepts the report, for at most within;
// the exit code must always match the verdict.
func waitReport(t *testing.T, args []string, within time.Duration, what string, ok func(*Report) bool) *Report {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		code, r, out, errOut := runStatus(t, args...)
		if code == ExitError {
			last = errOut
		} else {
			if code != r.Verdict.ExitCode() {
				t.Fatalf("exit %d for verdict %q", code, r.Verdict)
			}
			if ok(r) {
				return r
			}
			last = out
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed %s within %v; last:\n%s", what, within, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runBinary runs the plugin binary's status command and checks its exit code.
func runBinary(t *testing.T, bin string, wantCode int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"status"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %s status: %v", bin, err)
		}
		code = ee.ExitCode()
	}
	if code != wantCode {
		t.Errorf("%s status %v: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", bin, args, code, wantCode, out.String(), errOut.String())
	}
	return out.String()
}

// waitHolder waits until a session holds the group's lock key.
func waitHolder(t *testing.T, client *consulapi.Client, within time.Duration) lease.Holder {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := lease.ReadGroup(ctx, client, "bedrock/default/web/g")
		cancel()
		if err == nil && st.Leader.Held {
			return st.Leader
		}
		if time.Now().After(deadline) {
			t.Fatalf("nobody took the lock within %v (last error %v)", within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// assertMasterIsHolder compares the group's master with the raw lock key.
func assertMasterIsHolder(t *testing.T, client *consulapi.Client, g Group) {
	t.Helper()
	pair, _, err := client.KV().Get("bedrock/default/web/g/leader", nil)
	if err != nil || pair == nil {
		t.Fatalf("read the lock key: %v %v", pair, err)
	}
	if g.Term != pair.LockIndex {
		t.Errorf("group term %d, lock key's LockIndex %d", g.Term, pair.LockIndex)
	}
	if pair.Session == "" {
		if g.Master != "" {
			t.Errorf("status shows master %q, the lock key is free", g.Master)
		}
		return
	}
	var info lease.Info
	if err := json.Unmarshal(pair.Value, &info); err != nil {
		t.Fatalf("lock value: %v", err)
	}
	if g.Master != info.ID || len(g.Instances) == 0 || g.Instances[0].ID != info.ID || g.Instances[0].Role != RoleMaster ||
		g.Instances[0].Term != pair.LockIndex {
		t.Errorf("master %q, first row %+v; the lock key is held by %q at LockIndex %d", g.Master, g.Instances[0], info.ID, pair.LockIndex)
	}
}

func rowOf(g Group, id string) Instance {
	for _, in := range g.Instances {
		if in.ID == id {
			return in
		}
	}
	return Instance{}
}

// --- a synthetic job: two groups written straight into Consul, and a fake Nomad ---

// writeShop writes job "shop": group "api" with its lock held (a1 master,
// a2 a live clone, a3 a candidacy whose session ended) and group "db"
// whose lock was never taken.
func writeShop(t *testing.T, client *consulapi.Client) {
	t.Helper()
	session := func() string {
		id, _, err := client.Session().Create(&consulapi.SessionEntry{TTL: "60s", Behavior: consulapi.SessionBehaviorRelease}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = client.Session().Destroy(id, nil) })
		return id
	}
	put := func(key string, v lease.Info, session string) {
		b, _ := json.Marshal(v)
		if session == "" {
			if _, err := client.KV().Put(&consulapi.KVPair{Key: key, Value: b}, nil); err != nil {
				t.Fatal(err)
			}
			return
		}
		if ok, _, err := client.KV().Acquire(&consulapi.KVPair{Key: key, Value: b, Session: session}, nil); err != nil || !ok {
			t.Fatalf("lock %s: %v %v", key, ok, err)
		}
	}
	api := lease.KeyPrefix("", "default", "shop", "api")
	s1, s2 := session(), session()
	p := core.Position{Term: 1, Seq: 4}
	put(lease.GroupLeaderKey(api), lease.Info{ID: "a1", Address: "10.0.0.1:7400", Position: p}, s1)
	put(lease.GroupCandidatesPrefix(api)+"a1", lease.Info{ID: "a1", Address: "10.0.0.1:7400", Term: 1, Position: p, CaughtUp: true}, s1)
	put(lease.GroupCandidatesPrefix(api)+"a2", lease.Info{ID: "a2", Address: "10.0.0.2:7400", Term: 1, Position: p, CaughtUp: true}, s2)
	put(lease.GroupCandidatesPrefix(api)+"a3", lease.Info{ID: "a3", Address: "10.0.0.3:7400", Term: 1, Position: core.Position{Term: 1, Seq: 2}}, "")
	db := lease.KeyPrefix("", "default", "shop", "db")
	put(lease.GroupLeaderKey(db), lease.Info{}, "")
}

// fakeNomad answers the job allocations endpoint like Nomad's HTTP API
// (the JSON of the API library's AllocationListStub).
func fakeNomad(t *testing.T) string {
	t.Helper()
	type stub struct{ ID, NodeName, TaskGroup, ClientStatus, JobID, Namespace string }
	allocs := []stub{
		{"a1", "n1", "api", "running", "shop", "default"},
		{"a2", "n2", "api", "running", "shop", "default"},
		{"a3", "n3", "api", "failed", "shop", "default"},
		{"a4", "n4", "api", "running", "shop", "default"},
		{"d1", "n1", "db", "running", "shop", "default"},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/job/shop/allocations" || r.URL.Query().Get("namespace") != "default" {
			http.Error(w, "job not found", http.StatusNotFound)
			return
		}
		w.Header().Set("X-Nomad-Index", "7")
		_ = json.NewEncoder(w).Encode(allocs)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
