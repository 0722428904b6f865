package driver

import (
	"context"
	"errors"
	"sync"

	"github.com/bedrock-nomad/nomad-driver-bedrock/jobspecs"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// placementGuard enforces Bedrock's placement policy at StartTask: a group
// that Nomad may run with fewer than three instances, or without
// distinct_hosts, cannot fail over safely, so its tasks are refused unless
// the operator opted out. The Nomad API is read through jobspecs.Policy,
// which caches the verdict per job version; one guard lives as long as the
// settings it was built from.
type placementGuard struct {
	mu       sync.Mutex
	settings *settings
	policy   *jobspecs.Policy
	err      error
}

// policyFor returns the policy for the current settings, or nil when no
// Nomad API address is configured (plugin config, or NOMAD_ADDR in the
// agent's environment): then there is nothing to ask and nothing refused.
func (d *Driver) policyFor(s *settings) (*jobspecs.Policy, error) {
	g := &d.placement
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.settings == s {
		return g.policy, g.err
	}
	g.settings, g.policy, g.err = s, nil, nil
	client, err := jobspecs.NewAPIClient(s.nomad.Address, s.nomad.Token)
	if err != nil {
		g.err = err
		return nil, err
	}
	if client != nil {
		g.policy = jobspecs.NewPolicy(client, d.logger.Named("placement"))
	}
	return g.policy, nil
}

// checkPlacement refuses (unrecoverably, with a task event saying what to
// change) a task whose live job breaks the policy. An API that cannot be
// read is a warning event, never a refusal: the policy must not make
// Bedrock less available than the app it protects.
func (d *Driver) checkPlacement(ctx context.Context, cfg *plugin.TaskConfig) error {
	s := d.settings()
	h := &taskHandle{taskID: cfg.ID, allocID: cfg.AllocID, taskName: cfg.Name}
	p, err := d.policyFor(s)
	if err != nil {
		d.emit(h, "placement policy not checked: %v", err)
		return nil
	}
	if p == nil || cfg.JobID == "" || cfg.Group == "" {
		return nil
	}
	dec, err := p.Check(ctx, cfg.Namespace, cfg.JobID, cfg.Group)
	if err != nil && dec.Verdict != jobspecs.VerdictUnknown {
		return plugin.NewRecoverableError(err)
	}
	refuse, msg := dec.Enforce(s.allowUnsafePlacement)
	if msg != "" {
		d.emit(h, "%s", msg)
	}
	if refuse {
		return plugin.NewFatalError(errors.New(msg))
	}
	return nil
}
