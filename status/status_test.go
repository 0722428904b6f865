package status

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

func u64(v uint64) *uint64 { return &v }

func clone(id string, live, caughtUp bool) Instance {
	role := RoleClone
	if !live {
		role = RoleDown
	}
	return Instance{ID: id, Role: role, Live: live, CaughtUp: caughtUp}
}

func masterRow(id string) Instance {
	return Instance{ID: id, Role: RoleMaster, Live: true, CaughtUp: true}
}

func TestEvaluateVerdicts(t *testing.T) {
	cases := []struct {
		name    string
		g       Group
		want    Verdict
		reasons []string // substrings, in order
	}{
		{"one master and two caught-up clones is healthy",
			Group{Master: "m", Instances: []Instance{masterRow("m"), clone("a", true, true), clone("b", true, true)}},
			Healthy, nil},
		{"a clone still syncing leaves one caught-up clone",
			Group{Master: "m", Instances: []Instance{masterRow("m"), clone("a", true, true), clone("b", true, false)}},
			Degraded, []string{"1 live caught-up clone, want at least 2"}},
		{"two instances are too few",
			Group{Master: "m", Instances: []Instance{masterRow("m"), clone("a", true, true)}},
			Degraded, []string{"1 live caught-up clone, want at least 2", "2 instances, want at least 3"}},
		{"a clone whose session ended does not count",
			Group{Master: "m", Instances: []Instance{masterRow("m"), clone("a", true, true), clone("b", false, true)}},
			Degraded, []string{"1 live caught-up clone", "2 instances"}},
		{"a leftover down candidacy does not degrade a group with enough clones",
			Group{Master: "m", Instances: []Instance{masterRow("m"), clone("a", true, true), clone("b", true, true), clone("old", false, false)}},
			Healthy, nil},
		{"an allocation without candidacy is an instance but no caught-up clone",
			Group{Master: "m", Instances: []Instance{masterRow("m"), clone("a", true, true), {ID: "n", Role: RoleAbsent}}},
			Degraded, []string{"1 live caught-up clone"}},
		{"a clone registered as master degrades",
			Group{Master: "m", Instances: []Instance{masterRow("m"), clone("a", true, true),
				{ID: "b", Role: RoleClone, Live: true, CaughtUp: true, ServiceRole: "master"}}},
			Degraded, []string{"b is registered as master in Consul but does not hold the lock"}},
		{"a free lock is no master whatever the clones",
			Group{Term: 4, Instances: []Instance{clone("a", true, true), clone("b", true, true), clone("c", true, true)}},
			NoMaster, []string{"nobody holds the lock (last term 4)"}},
		{"a lock never taken is no master",
			Group{},
			NoMaster, []string{"nobody holds the lock", "0 live caught-up clones", "0 instances"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.g
			Evaluate(&g)
			if g.Verdict != tc.want {
				t.Fatalf("verdict = %q (%v), want %q", g.Verdict, g.Reasons, tc.want)
			}
			if tc.reasons == nil && len(g.Reasons) != 0 {
				t.Fatalf("reasons = %q, want none", g.Reasons)
			}
			all := strings.Join(g.Reasons, " | ")
			last := -1
			for _, r := range tc.reasons {
				i := strings.Index(all, r)
				if i < 0 || i < last {
					t.Fatalf("reasons %q lack %q (in order)", all, r)
				}
				last = i
			}
		})
	}
}

func TestVerdictExitCodesAndJobVerdict(t *testing.T) {
	for v, code := range map[Verdict]int{Healthy: 0, Degraded: 1, NoMaster: 2} {
		if v.ExitCode() != code {
			t.Errorf("%s exits %d, want %d", v, v.ExitCode(), code)
		}
	}
	r := &Report{Groups: []Group{{Verdict: Healthy}, {Verdict: NoMaster}, {Verdict: Degraded}}}
	r.finish()
	if r.Verdict != NoMaster || r.ExitCode != ExitNoMaster {
		t.Errorf("job verdict = %q (exit %d), want the worst group's: no master (2)", r.Verdict, r.ExitCode)
	}
	r = &Report{Groups: []Group{{Verdict: Healthy}, {Verdict: Degraded}}}
	r.finish()
	if r.Verdict != Degraded || r.ExitCode != ExitDegraded {
		t.Errorf("job verdict = %q (exit %d), want degraded (1)", r.Verdict, r.ExitCode)
	}
}

func pos(term, seq uint64) core.Position { return core.Position{Term: term, Seq: seq} }

func cand(id string, live bool, p core.Position, caughtUp bool) lease.Candidate {
	return lease.Candidate{Live: live, Info: lease.Info{ID: id, Node: "node-" + id, Address: "10.0.0." + id + ":7000", Term: p.Term, Position: p, CaughtUp: caughtUp}}
}

func TestAssembleRows(t *testing.T) {
	// The master campaigned at term 2 with a term-1 position; clones follow term 3.
	st := lease.GroupState{
		Prefix:       "bedrock/default/web/g",
		LeaderExists: true,
		Leader: lease.Holder{Held: true, Term: 3, Session: "s-1",
			Info: lease.Info{ID: "1", Node: "node-1", Address: "10.0.0.1:7000", Term: 3, Position: pos(2, 40), CaughtUp: true}},
		Candidates: []lease.Candidate{
			cand("1", true, pos(2, 40), true),
			cand("2", true, pos(3, 9), true),
			cand("3", true, pos(3, 12), true),
			cand("4", false, pos(2, 40), true),
			cand("5", true, pos(2, 38), false),
		},
		Malformed: []string{"bedrock/default/web/g/candidates/junk"},
	}
	svcs := map[string]service{
		"1": {ID: "web-g-1", Role: "master", Health: "passing"},
		"2": {ID: "web-g-2", Role: "clone", Health: HealthNoCheck},
		"3": {ID: "web-g-3", Role: "clone", Health: "critical"},
	}
	g := assemble("g", sources{state: st, services: svcs, service: "web-g"})

	var ids []string
	for _, in := range g.Instances {
		ids = append(ids, in.ID)
	}
	if want := []string{"1", "3", "2", "5", "4"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("row order = %v, want master, clones most caught up first, then down: %v", ids, want)
	}
	m := g.Instances[0]
	if g.Master != "1" || m.Role != RoleMaster || m.Term != 3 || g.Term != 3 || !m.Live || !m.CaughtUp {
		t.Errorf("master row = %+v (group master %q term %d), want instance 1 at the lock's term 3", m, g.Master, g.Term)
	}
	if m.Position != pos(3, 12) || m.LagOps != nil {
		t.Errorf("master position = %v lag %v, want the most advanced known 3/12 and no lag", m.Position, m.LagOps)
	}
	byID := map[string]Instance{}
	for _, in := range g.Instances {
		byID[in.ID] = in
	}
	if l := byID["2"].LagOps; l == nil || *l != 3 {
		t.Errorf("lag of 2 (3/9 vs 3/12) = %v, want 3", l)
	}
	if l := byID["3"].LagOps; l == nil || *l != 0 {
		t.Errorf("lag of 3 = %v, want 0", l)
	}
	if byID["5"].LagOps != nil {
		t.Errorf("lag of 5 (still in term 2) = %v, want unknown", *byID["5"].LagOps)
	}
	if d := byID["4"]; d.Role != RoleDown || d.Live || d.Health != HealthUnregistered {
		t.Errorf("row 4 = %+v, want down, not live, unregistered", d)
	}
	if h := byID["3"]; h.Health != "critical" || h.ServiceID != "web-g-3" || h.ServiceRole != "clone" {
		t.Errorf("row 3 service = %+v", h)
	}
	if g.Verdict != Healthy {
		t.Errorf("verdict = %s %v, want healthy (2 live caught-up clones)", g.Verdict, g.Reasons)
	}
	if len(g.Warnings) != 1 || !strings.Contains(g.Warnings[0], "candidates/junk") {
		t.Errorf("warnings = %v, want the malformed key", g.Warnings)
	}
}

func TestAssembleMasterWithoutCandidacyAndNomad(t *testing.T) {
	st := lease.GroupState{
		Prefix: "bedrock/default/web/g", LeaderExists: true,
		Leader: lease.Holder{Held: true, Term: 7, Session: "s", Info: lease.Info{ID: "m", Address: "10.0.0.9:7000", Position: pos(7, 5)}},
		Candidates: []lease.Candidate{
			{Live: true, Info: lease.Info{ID: "a", Term: 7, Position: pos(7, 5), CaughtUp: true}},
			{Live: false, Info: lease.Info{ID: "gone", Term: 6, Position: pos(6, 1)}},
		},
	}
	allocs := map[string]alloc{
		"m":        {ID: "m", Node: "n-m", Group: "g", Status: "running"},
		"a":        {ID: "a", Node: "n-a", Group: "g", Status: "running"},
		"new":      {ID: "new", Node: "n-new", Group: "g", Status: "pending"},
		"finished": {ID: "finished", Node: "n-f", Group: "g", Status: "complete"},
	}
	g := assemble("g", sources{state: st, allocs: allocs})
	var got []string
	for _, in := range g.Instances {
		got = append(got, in.ID+":"+string(in.Role)+":"+in.Node+":"+in.Nomad+":"+in.Health)
	}
	want := []string{
		"m:master:n-m:running:unknown",
		"a:clone:n-a:running:unknown",
		"new:absent:n-new:pending:unknown",
		"gone:down:::unknown",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rows =\n%v\nwant\n%v", got, want)
	}
	if g.Instances[0].SyncAddress != "10.0.0.9:7000" || g.Instances[0].Term != 7 {
		t.Errorf("master row from the lock value = %+v", g.Instances[0])
	}
	if c := Count(&g); c != (Counts{Masters: 1, CaughtUpClones: 1, Instances: 3}) {
		t.Errorf("counts = %+v", c)
	}
	if g.Verdict != Degraded {
		t.Errorf("verdict = %s, want degraded", g.Verdict)
	}
}

func TestCheckHealth(t *testing.T) {
	entry := func(checks ...*consulapi.HealthCheck) *consulapi.ServiceEntry {
		return &consulapi.ServiceEntry{Service: &consulapi.AgentService{ID: "web-1"}, Checks: checks}
	}
	node := func(status string) *consulapi.HealthCheck {
		return &consulapi.HealthCheck{CheckID: "serfHealth", Status: status}
	}
	svc := func(status string) *consulapi.HealthCheck {
		return &consulapi.HealthCheck{CheckID: "service:web-1", ServiceID: "web-1", Status: status}
	}
	other := &consulapi.HealthCheck{CheckID: "service:x", ServiceID: "x", Status: consulapi.HealthCritical}
	cases := []struct {
		name string
		e    *consulapi.ServiceEntry
		want string
	}{
		{"no check of its own", entry(node(consulapi.HealthPassing)), HealthNoCheck},
		{"passing TTL check", entry(node(consulapi.HealthPassing), svc(consulapi.HealthPassing), other), consulapi.HealthPassing},
		{"failing TTL check", entry(node(consulapi.HealthPassing), svc(consulapi.HealthCritical)), consulapi.HealthCritical},
		{"warning beats passing", entry(svc(consulapi.HealthPassing), svc(consulapi.HealthWarning)), consulapi.HealthWarning},
		{"a lost node makes it critical", entry(node(consulapi.HealthCritical), svc(consulapi.HealthPassing)), consulapi.HealthCritical},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkHealth(tc.e); got != tc.want {
				t.Errorf("checkHealth = %q, want %q", got, tc.want)
			}
		})
	}
}

func sampleReport(nomad bool) *Report {
	r := &Report{Job: "web", Namespace: "default", Consul: "127.0.0.1:8500"}
	if nomad {
		r.Nomad = "http://127.0.0.1:4646"
	}
	g := Group{Name: "g", KeyPrefix: "bedrock/default/web/g", Term: 3, Master: "0b5c2d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e", Service: "web-g",
		Instances: []Instance{
			{ID: "0b5c2d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e", Node: "node-1", Role: RoleMaster, Term: 3, Position: pos(3, 12), CaughtUp: true, Live: true, Health: "passing", SyncAddress: "10.0.0.1:7400", Nomad: "running"},
			{ID: "a1b2c3d4-0000-4000-8000-000000000002", Node: "node-2", Role: RoleClone, Term: 3, Position: pos(3, 12), LagOps: u64(0), CaughtUp: true, Live: true, Health: "passing", SyncAddress: "10.0.0.2:7400", Nomad: "running"},
			{ID: "ffffeeee-0000-4000-8000-000000000003", Node: "node-3", Role: RoleDown, Term: 3, Position: pos(3, 4), LagOps: u64(8), Health: "critical", SyncAddress: "10.0.0.3:7400", Nomad: "lost"},
		}}
	Evaluate(&g)
	r.Groups = []Group{g}
	r.Warnings = []string{"example warning"}
	r.finish()
	return r
}

func TestWriteTable(t *testing.T) {
	t.Run("rows, summary and verdict line", func(t *testing.T) {
		var b bytes.Buffer
		if err := WriteTable(&b, sampleReport(false), false); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		t.Logf("\n%s", out)
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if lines[len(lines)-1] != "verdict: degraded" {
			t.Errorf("last line = %q, want the verdict", lines[len(lines)-1])
		}
		for _, want := range []string{
			"job web (namespace default), consul 127.0.0.1:8500\n",
			"group g: master 0b5c2d1e, term 3, service web-g\n",
			"g: degraded: 1 master, 1 live caught-up clone, 2 instances; 1 live caught-up clone, want at least 2; 2 instances, want at least 3\n",
			"warning: example warning\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q", want)
			}
		}
		var header, master, down []string
		for _, l := range lines {
			switch {
			case strings.HasPrefix(l, "INSTANCE"):
				header = strings.Fields(l)
			case strings.HasPrefix(l, "0b5c2d1e "):
				master = strings.Fields(l)
			case strings.HasPrefix(l, "ffffeeee "):
				down = strings.Fields(l)
			}
		}
		if want := []string{"INSTANCE", "NODE", "ROLE", "TERM", "POSITION", "LAG", "CAUGHT-UP", "HEALTH", "SYNC", "ADDRESS"}; !reflect.DeepEqual(header, want) {
			t.Errorf("header = %v, want %v (no NOMAD column without Nomad)", header, want)
		}
		if want := []string{"0b5c2d1e", "node-1", "master", "3", "3/12", "-", "yes", "passing", "10.0.0.1:7400"}; !reflect.DeepEqual(master, want) {
			t.Errorf("master row = %v, want %v", master, want)
		}
		if want := []string{"ffffeeee", "node-3", "down", "3", "3/4", "8", "no", "critical", "10.0.0.3:7400"}; !reflect.DeepEqual(down, want) {
			t.Errorf("down row = %v, want %v", down, want)
		}
		// columns line up: every row starts its ROLE cell where the header does
		h := 0
		for h < len(lines) && !strings.HasPrefix(lines[h], "INSTANCE") {
			h++
		}
		if h+3 >= len(lines) {
			t.Fatalf("no header and 3 rows in:\n%s", out)
		}
		col := strings.Index(lines[h], "ROLE")
		for _, l := range lines[h+1 : h+4] {
			if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
				t.Errorf("row %q is not aligned on the ROLE column (%d)", l, col)
			}
		}
	})
	t.Run("verbose ids and the Nomad column", func(t *testing.T) {
		var b bytes.Buffer
		if err := WriteTable(&b, sampleReport(true), true); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		if !strings.Contains(out, "0b5c2d1e-6f7a-4b8c-9d0e-1f2a3b4c5d6e") || !strings.Contains(out, ", nomad http://127.0.0.1:4646") {
			t.Errorf("verbose table lacks full ids or the Nomad address:\n%s", out)
		}
		var sawHeader bool
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "INSTANCE") {
				sawHeader = strings.HasSuffix(l, "NOMAD")
			}
			if strings.HasPrefix(l, "ffffeeee-") && !strings.HasSuffix(l, "lost") {
				t.Errorf("down row lacks Nomad's status: %q", l)
			}
		}
		if !sawHeader {
			t.Errorf("no NOMAD column with Nomad:\n%s", out)
		}
	})
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, sampleReport(false)); err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b.Bytes(), &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b.String())
	}
	if raw["verdict"] != "degraded" || raw["exit_code"] != float64(1) || raw["job"] != "web" {
		t.Errorf("top level = %v", raw)
	}
	g := raw["groups"].([]any)[0].(map[string]any)
	rows := g["instances"].([]any)
	m := rows[0].(map[string]any)
	if m["role"] != "master" || m["lag_ops"] != nil || m["term"] != float64(3) ||
		!reflect.DeepEqual(m["position"], map[string]any{"term": float64(3), "seq": float64(12)}) {
		t.Errorf("master row = %v", m)
	}
	if c := rows[1].(map[string]any); c["lag_ops"] != float64(0) || c["caught_up"] != true || c["sync_address"] != "10.0.0.2:7400" {
		t.Errorf("clone row = %v", c)
	}
	// it round-trips into the same report
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, sampleReport(false)) {
		t.Errorf("JSON does not round-trip:\n%+v\n%+v", back, sampleReport(false))
	}
}

func TestRunUsageErrors(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"missing -job", nil, ExitUsage, "status: -job is required"},
		{"unknown flag", []string{"-job", "web", "-bogus"}, ExitUsage, "flag provided but not defined: -bogus"},
		{"stray argument", []string{"-job", "web", "extra"}, ExitUsage, "unexpected arguments: extra"},
		{"help", []string{"-h"}, 0, "Usage: nomad-driver-bedrock status"},
		{"unreachable consul", []string{"-job", "web", "-consul", "127.0.0.1:1", "-timeout", "3s"}, ExitError, "cannot reach Consul at 127.0.0.1:1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := Run(ctx, tc.args, &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, errb.String())
			}
			if !strings.Contains(errb.String(), tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, errb.String())
			}
			if out.Len() != 0 {
				t.Errorf("stdout not empty: %q", out.String())
			}
		})
	}
}

// A group without a master shows the high-water mark a new master must hold and why each live
// candidate waits (issue 13: the group waits rather than promote stale data).
func TestWriteTableShowsWhyNoMaster(t *testing.T) {
	st := lease.GroupState{
		Prefix: "bedrock/default/web/g", LeaderExists: true,
		Leader:    lease.Holder{Term: 4, Info: lease.Info{ID: "1", Position: pos(3, 500)}},
		HighWater: lease.HighWater{Term: 4, Position: pos(4, 30), ID: "1"},
		Candidates: []lease.Candidate{
			{Info: lease.Info{ID: "2", Position: pos(4, 12), CaughtUp: true, Waiting: "position 4/12 is behind the high-water mark"}, Live: true},
		},
	}
	g := assemble("g", sources{state: st})
	if g.HighWater == nil || g.HighWater.Position != pos(4, 30) || g.Instances[0].Waiting == "" {
		t.Fatalf("group %+v", g)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, &Report{Job: "web", Namespace: "default", Groups: []Group{g}}, true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"g: a new master must hold the high-water mark 4/30 (published by term 4) (delete bedrock/default/web/g/highwater in Consul to accept losing it)\n",
		"waiting: 2: position 4/12 is behind the high-water mark\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
