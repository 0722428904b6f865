package jobspecs

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/nomad/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/fixtures"
)

// fixturesDir is the folder of the recorded Nomad 2.0.5 job API answers
// inside the embedded recording (internal/fixtures).
func fixturesDir(t *testing.T) string {
	t.Helper()
	return "jobs-api"
}

// loadJob decodes one recorded GET /v1/job/<id> answer.
func loadJob(t *testing.T, dir, id string) *api.Job {
	t.Helper()
	b, err := fixtures.Read(path.Join(dir, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var job api.Job
	if err := json.Unmarshal(b, &job); err != nil {
		t.Fatalf("decode %s.json: %v", id, err)
	}
	return &job
}

// fakeNomad serves the recorded answers like Nomad's /v1/job/<id> endpoint:
// <id>.json with 200, anything else with the recorded 404.
type fakeNomad struct {
	dir string

	mu       sync.Mutex
	requests map[string]int
	override map[string][]byte // job id -> body served instead of the fixture
}

func (f *fakeNomad) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, ok := strings.CutPrefix(r.URL.Path, "/v1/job/")
	if r.Method != http.MethodGet || !ok || strings.Contains(id, "/") {
		http.Error(w, "unexpected request "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.requests[id+"?namespace="+r.URL.Query().Get("namespace")]++
	body, overridden := f.override[id]
	f.mu.Unlock()
	if !overridden {
		var err error
		body, err = fixtures.Read(path.Join(f.dir, id+".json"))
		if err != nil {
			status, _ := fixtures.Read(path.Join(f.dir, "missing.status"))
			code, _ := strconv.Atoi(strings.TrimSpace(string(status)))
			missing, _ := fixtures.Read(path.Join(f.dir, "missing.body"))
			w.WriteHeader(code)
			_, _ = w.Write(missing)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Nomad-Index", "30")
	_, _ = w.Write(body)
}

func (f *fakeNomad) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[key]
}

func (f *fakeNomad) setOverride(id string, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.override[id] = body
}

func newFakeNomad(t *testing.T) (*fakeNomad, *api.Client) {
	t.Helper()
	t.Setenv("NOMAD_TOKEN", "")
	t.Setenv("NOMAD_NAMESPACE", "")
	t.Setenv("NOMAD_REGION", "")
	f := &fakeNomad{dir: fixturesDir(t), requests: map[string]int{}, override: map[string][]byte{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	client, err := api.NewClient(&api.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return f, client
}

const (
	count2Refusal     = `bedrock refuses to start job "count2" (version 0): group "server" has count = 2, fewer than the 3 instances Bedrock needs for failover. Fix the jobspec: set count = 3 or more in the group. To run it anyway without failover guarantees, set allow_unsafe_placement = true in the bedrock plugin config of the Nomad client.`
	nodistinctRefusal = `bedrock refuses to start job "nodistinct" (version 0): group "server" has no distinct_hosts constraint, so several instances may share a node. Fix the jobspec: add constraint { operator = "distinct_hosts" value = "true" } to the group or the job. To run it anyway without failover guarantees, set allow_unsafe_placement = true in the bedrock plugin config of the Nomad client.`
)

func TestPolicyAgainstRecordedNomad(t *testing.T) {
	fake, client := newFakeNomad(t)
	p := NewPolicy(client, nil)
	cases := []struct {
		job, group string
		verdict    Verdict
		rules      []string
		message    string
		wantErr    bool
	}{
		{job: "good", group: "server", verdict: VerdictAllowed},
		{job: "count2", group: "server", verdict: VerdictRefused, rules: []string{RuleCount}, message: count2Refusal},
		{job: "nodistinct", group: "server", verdict: VerdictRefused, rules: []string{RuleDistinctHosts}, message: nodistinctRefusal},
		{job: "jobdistinct", group: "server", verdict: VerdictAllowed},
		{job: "mixed", group: "db", verdict: VerdictAllowed},
		{job: "mixed", group: "web", verdict: VerdictAllowed},
		{job: "missing", group: "server", verdict: VerdictUnknown, wantErr: true,
			message: `placement policy not checked: the Nomad API does not know job "missing"`},
		{job: "good", group: "nosuchgroup", verdict: VerdictUnknown, wantErr: true,
			message: `placement policy not checked: job "good" version 0 has no group "nosuchgroup" (the job changed since this allocation was placed)`},
	}
	for _, tc := range cases {
		t.Run(tc.job+"/"+tc.group, func(t *testing.T) {
			d, err := p.Check(context.Background(), "", tc.job, tc.group)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if d.Verdict != tc.verdict {
				t.Errorf("verdict %v, want %v (%s)", d.Verdict, tc.verdict, d.Message)
			}
			var rules []string
			for _, v := range d.Violations {
				rules = append(rules, v.Rule)
			}
			if strings.Join(rules, ",") != strings.Join(tc.rules, ",") {
				t.Errorf("rules %v, want %v", rules, tc.rules)
			}
			if d.Message != tc.message {
				t.Errorf("message:\n%s\nwant:\n%s", d.Message, tc.message)
			}
			if d.Cached {
				t.Error("first check must not come from the cache")
			}
		})
	}
	if n := fake.count("missing?namespace=default"); n != 1 {
		t.Errorf("the missing job was requested %d times in namespace default, want 1", n)
	}
}

func TestPolicyCachesPerJobVersion(t *testing.T) {
	fake, client := newFakeNomad(t)
	p := NewPolicy(client, nil)
	ctx := context.Background()

	first, err := p.Check(ctx, "default", "count2", "server")
	if err != nil || first.Verdict != VerdictRefused || first.Cached {
		t.Fatalf("first check: %+v, %v", first, err)
	}
	again, err := p.Check(ctx, "default", "count2", "server")
	if err != nil || again.Verdict != VerdictRefused || !again.Cached || again.Message != first.Message {
		t.Fatalf("second check of the same version: %+v, %v", again, err)
	}

	// The operator fixes the job: a new version with count 3 and distinct hosts.
	job := loadJob(t, fake.dir, "count2")
	version, modify := uint64(1), uint64(40)
	job.Version, job.JobModifyIndex = &version, &modify
	three := 3
	job.TaskGroups[0].Count = &three
	body, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	fake.setOverride("count2", body)
	fixed, err := p.Check(ctx, "default", "count2", "server")
	if err != nil || fixed.Verdict != VerdictAllowed || fixed.Cached || fixed.JobVersion != 1 {
		t.Fatalf("check of the new version: %+v, %v", fixed, err)
	}
	if n := fake.count("count2?namespace=default"); n != 3 {
		t.Errorf("job read %d times, want 3 (once per check: the version is only known by asking)", n)
	}
}

func TestPolicyUnreachableAPI(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.URL
	srv.Close() // nothing listens there any more
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewPolicy(client, nil).Check(context.Background(), "default", "good", "server")
	if err == nil || d.Verdict != VerdictUnknown {
		t.Fatalf("got %+v, %v; want an unknown verdict with an error", d, err)
	}
	if !strings.HasPrefix(d.Message, "placement policy not checked: cannot reach the Nomad API (") {
		t.Errorf("message %q", d.Message)
	}
}

func TestPolicyWithoutClient(t *testing.T) {
	d, err := NewPolicy(nil, nil).Check(context.Background(), "default", "good", "server")
	if !errors.Is(err, ErrNoNomadAPI) || d.Verdict != VerdictUnknown {
		t.Fatalf("got %+v, %v", d, err)
	}
	var nilPolicy *Policy
	if d, err := nilPolicy.Check(context.Background(), "", "good", "server"); !errors.Is(err, ErrNoNomadAPI) || d.Verdict != VerdictUnknown {
		t.Fatalf("nil policy: %+v, %v", d, err)
	}
}

func TestPolicyForbidden(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "Permission denied", http.StatusForbidden)
	}))
	defer srv.Close()
	client, err := api.NewClient(&api.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewPolicy(client, nil).Check(context.Background(), "default", "good", "server")
	want := `placement policy not checked: the Nomad token may not read job "good"; give it read-job on the job's namespace`
	if err == nil || d.Verdict != VerdictUnknown || d.Message != want {
		t.Fatalf("got %+v, %v", d, err)
	}
}

func TestCheckJob(t *testing.T) {
	dir := fixturesDir(t)
	i64 := func(n int64) *int64 { return &n }
	cases := []struct {
		name   string
		job    func() *api.Job
		group  string
		expect []string
	}{
		{name: "good", job: func() *api.Job { return loadJob(t, dir, "good") }, group: "server"},
		{name: "count2", job: func() *api.Job { return loadJob(t, dir, "count2") }, group: "server",
			expect: []string{`group "server" has count = 2, fewer than the 3 instances Bedrock needs for failover; hint: set count = 3 or more in the group`}},
		{name: "nodistinct", job: func() *api.Job { return loadJob(t, dir, "nodistinct") }, group: "server",
			expect: []string{`group "server" has no distinct_hosts constraint, so several instances may share a node; hint: add constraint { operator = "distinct_hosts" value = "true" } to the group or the job`}},
		{name: "jobdistinct", job: func() *api.Job { return loadJob(t, dir, "jobdistinct") }, group: "server"},
		{name: "mixed db", job: func() *api.Job { return loadJob(t, dir, "mixed") }, group: "db"},
		{name: "mixed web is not bedrock", job: func() *api.Job { return loadJob(t, dir, "mixed") }, group: "web"},
		{name: "unknown group", job: func() *api.Job { return loadJob(t, dir, "good") }, group: "other"},
		{name: "nil job", job: func() *api.Job { return nil }, group: "server"},
		{name: "scaling min", group: "server", job: func() *api.Job {
			j := loadJob(t, dir, "good")
			j.TaskGroups[0].Scaling = &api.ScalingPolicy{Min: i64(1), Max: i64(5)}
			return j
		}, expect: []string{`group "server" has scaling min = 1, which lets it shrink below 3 instances; hint: set min = 3 or more in the group's scaling block`}},
		{name: "nil count means 1", group: "server", job: func() *api.Job {
			j := loadJob(t, dir, "good")
			j.TaskGroups[0].Count = nil
			return j
		}, expect: []string{`group "server" has count = 1, fewer than the 3 instances Bedrock needs for failover; hint: set count = 3 or more in the group`}},
		{name: "nil count takes the scaling min", group: "server", job: func() *api.Job {
			j := loadJob(t, dir, "good")
			j.TaskGroups[0].Count = nil
			j.TaskGroups[0].Scaling = &api.ScalingPolicy{Min: i64(3), Max: i64(5)}
			return j
		}},
		{name: "distinct_hosts false", group: "server", job: func() *api.Job {
			j := loadJob(t, dir, "good")
			j.TaskGroups[0].Constraints[0].RTarget = "false"
			return j
		}, expect: []string{`group "server" has no distinct_hosts constraint, so several instances may share a node; hint: add constraint { operator = "distinct_hosts" value = "true" } to the group or the job`}},
		{name: "distinct_property on node id", group: "server", job: func() *api.Job {
			j := loadJob(t, dir, "nodistinct")
			j.TaskGroups[0].Constraints = []*api.Constraint{api.NewConstraint("${node.unique.id}", api.ConstraintDistinctProperty, "")}
			return j
		}},
		{name: "distinct_property allowing 2 per node", group: "server", job: func() *api.Job {
			j := loadJob(t, dir, "nodistinct")
			j.TaskGroups[0].Constraints = []*api.Constraint{api.NewConstraint("${node.unique.id}", api.ConstraintDistinctProperty, "2")}
			return j
		}, expect: []string{`group "server" has no distinct_hosts constraint, so several instances may share a node; hint: add constraint { operator = "distinct_hosts" value = "true" } to the group or the job`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, v := range CheckJob(tc.job(), tc.group) {
				got = append(got, v.String())
			}
			if strings.Join(got, "\n") != strings.Join(tc.expect, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.expect, "\n"))
			}
		})
	}
}

func TestNewAPIClient(t *testing.T) {
	var mu sync.Mutex
	var token string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		token = r.Header.Get("X-Nomad-Token")
		mu.Unlock()
		http.NotFound(w, r)
	}))
	defer srv.Close()
	sentToken := func(c *api.Client) string {
		_, _, _ = c.Jobs().Info("x", nil)
		mu.Lock()
		defer mu.Unlock()
		return token
	}

	t.Setenv("NOMAD_ADDR", "")
	t.Setenv("NOMAD_TOKEN", "")
	c, err := NewAPIClient("", "")
	if err != nil || c != nil {
		t.Fatalf("unconfigured: got %v, %v; want no client", c, err)
	}
	c, err = NewAPIClient(srv.URL, "plugin-token")
	if err != nil || c == nil || c.Address() != srv.URL || sentToken(c) != "plugin-token" {
		t.Fatalf("plugin config: got %v, %v", c, err)
	}
	t.Setenv("NOMAD_ADDR", srv.URL)
	t.Setenv("NOMAD_TOKEN", "env-token")
	c, err = NewAPIClient("", "")
	if err != nil || c == nil || c.Address() != srv.URL || sentToken(c) != "env-token" {
		t.Fatalf("environment: got %v, %v", c, err)
	}
	c, err = NewAPIClient("", "plugin-token")
	if err != nil || c == nil || sentToken(c) != "plugin-token" {
		t.Fatalf("plugin token over environment: got %v, %v", c, err)
	}
	if _, err := NewAPIClient("http://bad host:1", ""); err == nil {
		t.Fatal("an invalid address must be an error")
	}
}

func TestDecisionEnforce(t *testing.T) {
	refused := Decision{Verdict: VerdictRefused, Message: count2Refusal, Violations: []Violation{{
		Group: "server", Rule: RuleCount,
		Message: `group "server" has count = 2, fewer than the 3 instances Bedrock needs for failover`,
		Hint:    "set count = 3 or more in the group",
	}}}
	cases := []struct {
		name        string
		d           Decision
		allowUnsafe bool
		refuse      bool
		message     string
	}{
		{name: "allowed", d: Decision{Verdict: VerdictAllowed}},
		{name: "allowed with opt-out", d: Decision{Verdict: VerdictAllowed}, allowUnsafe: true},
		{name: "refused", d: refused, refuse: true, message: count2Refusal},
		{name: "refused with opt-out", d: refused, allowUnsafe: true,
			message: `starting despite the placement policy because allow_unsafe_placement = true: group "server" has count = 2, fewer than the 3 instances Bedrock needs for failover; failover is not guaranteed`},
		{name: "unknown", d: Decision{Verdict: VerdictUnknown, Message: "placement policy not checked: x"}, message: "placement policy not checked: x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			refuse, msg := tc.d.Enforce(tc.allowUnsafe)
			if refuse != tc.refuse || msg != tc.message {
				t.Errorf("Enforce(%v) = %v, %q; want %v, %q", tc.allowUnsafe, refuse, msg, tc.refuse, tc.message)
			}
		})
	}
}
