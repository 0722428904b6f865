package jobspecs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/api"
)

// Verdict is the outcome of a runtime policy check.
type Verdict int

const (
	// VerdictUnknown means the job could not be read (API unreachable, job or
	// group not found, permission denied). The caller starts the task and
	// emits Decision.Message as a warning task event.
	VerdictUnknown Verdict = iota
	// VerdictAllowed means the live job complies.
	VerdictAllowed
	// VerdictRefused means the live job breaks the policy. Unless the plugin
	// config sets OptOutFlag, the caller fails StartTask with an
	// unrecoverable error carrying Decision.Message.
	VerdictRefused
)

// String names the verdict for logs.
func (v Verdict) String() string {
	switch v {
	case VerdictAllowed:
		return "allowed"
	case VerdictRefused:
		return "refused"
	default:
		return "unknown"
	}
}

// Decision is the result of [Policy.Check].
type Decision struct {
	Verdict    Verdict
	JobVersion uint64      // version of the job that was judged (0 when unknown)
	Violations []Violation // set when refused
	// Message is user-facing text for the task event: for a refusal it says
	// what to change and how to opt out; for an unknown verdict why the
	// policy could not be checked.
	Message string
	Cached  bool // the verdict for this job version came from the cache
}

// Enforce maps the decision onto what StartTask does, given the plugin
// config's OptOutFlag: refuse is true when the task must fail with an
// unrecoverable error carrying message; otherwise a non-empty message is a
// warning task event (an unknown verdict, or a refusal the operator opted
// out of), and an empty one means start silently.
func (d Decision) Enforce(allowUnsafe bool) (refuse bool, message string) {
	switch d.Verdict {
	case VerdictAllowed:
		return false, ""
	case VerdictRefused:
		if !allowUnsafe {
			return true, d.Message
		}
		parts := make([]string, 0, len(d.Violations))
		for _, v := range d.Violations {
			parts = append(parts, v.Message)
		}
		return false, fmt.Sprintf("starting despite the placement policy because %s = true: %s; failover is not guaranteed",
			OptOutFlag, strings.Join(parts, "; "))
	default:
		return false, d.Message
	}
}

// DefaultPolicyTimeout bounds one job read when the caller's context has no
// deadline, so that a slow API cannot hold up StartTask for long.
const DefaultPolicyTimeout = 5 * time.Second

// Policy is the driver's runtime placement check: it reads the live job
// through Nomad's HTTP API and applies [CheckJob]. The job is read on every
// call, because a task cannot know which job version is current without
// asking, but the verdict is cached per job version (keyed by namespace, job,
// group, version and modify index) so repeated starts of the same version are
// judged once and logged once. A Policy is safe for concurrent use.
type Policy struct {
	client  *api.Client
	logger  hclog.Logger
	timeout time.Duration

	mu    sync.Mutex
	cache map[policyKey]policyEntry
}

type policyKey struct{ namespace, job, group string }

type policyEntry struct {
	version, modifyIndex uint64
	decision             Decision
}

// NewPolicy returns a Policy that reads jobs with client. A nil client makes
// every check unknown (the policy is then only a warning), and a nil logger
// discards logs.
func NewPolicy(client *api.Client, logger hclog.Logger) *Policy {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Policy{client: client, logger: logger.Named("placement"), timeout: DefaultPolicyTimeout,
		cache: map[policyKey]policyEntry{}}
}

// ErrNoNomadAPI is returned by Check when the policy has no API client.
var ErrNoNomadAPI = errors.New("no Nomad API address configured")

// Check judges group of job jobID in namespace (empty means "default"). The
// error is non-nil exactly when the verdict is VerdictUnknown; it carries the
// cause for logs, while Decision.Message is what the task event should say.
// A refusal is a verdict, not an error.
func (p *Policy) Check(ctx context.Context, namespace, jobID, group string) (Decision, error) {
	if namespace == "" {
		namespace = api.DefaultNamespace
	}
	if p == nil || p.client == nil {
		return unknownDecision(jobID, ErrNoNomadAPI), fmt.Errorf("check placement of job %q: %w", jobID, ErrNoNomadAPI)
	}
	if _, ok := ctx.Deadline(); !ok && p.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.timeout)
		defer cancel()
	}
	q := (&api.QueryOptions{Namespace: namespace}).WithContext(ctx)
	job, _, err := p.client.Jobs().Info(jobID, q)
	if err != nil {
		err = fmt.Errorf("read job %q in namespace %q: %w", jobID, namespace, err)
		p.logger.Warn("cannot check placement policy", "job", jobID, "namespace", namespace, "error", err)
		return unknownDecision(jobID, err), err
	}
	version, modifyIndex := derefUint64(job.Version), derefUint64(job.JobModifyIndex)
	if findGroup(job, group) == nil {
		err := fmt.Errorf("job %q version %d has no group %q", jobID, version, group)
		return Decision{Verdict: VerdictUnknown, JobVersion: version,
			Message: fmt.Sprintf("placement policy not checked: %v (the job changed since this allocation was placed)", err)}, err
	}

	key := policyKey{namespace: namespace, job: jobID, group: group}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.cache[key]; ok && e.version == version && e.modifyIndex == modifyIndex {
		d := e.decision
		d.Cached = true
		return d, nil
	}
	d := Decision{Verdict: VerdictAllowed, JobVersion: version}
	if vs := CheckJob(job, group); len(vs) > 0 {
		d = Decision{Verdict: VerdictRefused, JobVersion: version, Violations: vs, Message: refusalMessage(jobID, version, vs)}
		p.logger.Warn("placement policy refuses job", "job", jobID, "namespace", namespace, "group", group,
			"version", version, "violations", len(vs))
	} else {
		p.logger.Debug("placement policy allows job", "job", jobID, "namespace", namespace, "group", group, "version", version)
	}
	// One entry per job and group: a new version replaces the old one.
	p.cache[key] = policyEntry{version: version, modifyIndex: modifyIndex, decision: d}
	return d, nil
}

// refusalMessage is the task event text of a refusal: what is wrong, what to
// change, and how to opt out.
func refusalMessage(jobID string, version uint64, vs []Violation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "bedrock refuses to start job %q (version %d): ", jobID, version)
	for i, v := range vs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.Message)
	}
	b.WriteString(". Fix the jobspec: ")
	for i, v := range vs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.Hint)
	}
	fmt.Fprintf(&b, ". To run it anyway without failover guarantees, set %s = true in the bedrock plugin config of the Nomad client.", OptOutFlag)
	return b.String()
}

// unknownDecision explains why the policy could not be checked.
func unknownDecision(jobID string, err error) Decision {
	var msg string
	var ure api.UnexpectedResponseError
	switch {
	case errors.Is(err, ErrNoNomadAPI):
		msg = "placement policy not checked: no Nomad API address is configured; set it in the bedrock plugin config or NOMAD_ADDR in the client agent's environment"
	case errors.As(err, &ure) && ure.StatusCode() == http.StatusNotFound:
		msg = fmt.Sprintf("placement policy not checked: the Nomad API does not know job %q", jobID)
	case errors.As(err, &ure) && ure.StatusCode() == http.StatusForbidden:
		msg = fmt.Sprintf("placement policy not checked: the Nomad token may not read job %q; give it read-job on the job's namespace", jobID)
	default:
		msg = fmt.Sprintf("placement policy not checked: cannot reach the Nomad API (%v)", err)
	}
	return Decision{Verdict: VerdictUnknown, Message: msg}
}

func derefUint64(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}
