// Package status is the `nomad-driver-bedrock status` command: an operator's
// at-a-glance view of a Bedrock job. It reads the election keys every syncer
// keeps in Consul (the lock key and the candidacies, see syncer/lease), the
// Consul service each syncer registers for its app (role and check health)
// and, when a Nomad address is configured, the job's allocations; it prints
// one row per instance and a verdict whose exit status scripts can test.
//
// It only reads: nothing in Consul or Nomad changes when it runs.
package status

import (
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// Exit statuses of the status command. The verdict's codes are ordered by
// severity so that the worst group of a job decides the exit status; usage
// errors exit 2 like every other command of the binary (flag convention),
// with nothing on stdout.
const (
	ExitHealthy  = 0 // every group: one master and at least 2 live caught-up clones
	ExitDegraded = 1 // a master, but too few live caught-up clones or instances
	ExitNoMaster = 2 // a group where nobody holds the lock
	ExitError    = 3 // Consul unreachable or refusing, unknown job or group
	ExitUsage    = 2 // bad flags or arguments
)

// MinInstances and MinCaughtUpClones are the thresholds of a healthy group:
// the placement policy's minimum of 3 instances, so that any single failure
// still leaves a master and a caught-up clone to promote.
const (
	MinInstances      = 3
	MinCaughtUpClones = 2
)

// Verdict sums up a group or a whole job.
type Verdict string

// The verdicts, from best to worst.
const (
	Healthy  Verdict = "healthy"
	Degraded Verdict = "degraded"
	NoMaster Verdict = "no master"
)

// ExitCode is the command's exit status for the verdict.
func (v Verdict) ExitCode() int {
	switch v {
	case Healthy:
		return ExitHealthy
	case Degraded:
		return ExitDegraded
	default:
		return ExitNoMaster
	}
}

// Worse returns the more severe of two verdicts (a job is as bad as its
// worst group).
func Worse(a, b Verdict) Verdict {
	if a.ExitCode() >= b.ExitCode() {
		return a
	}
	return b
}

// Role is what an instance is, as far as Consul (and Nomad) tell.
type Role string

// The roles of an instance row.
const (
	// RoleMaster holds the group's lock.
	RoleMaster = Role(core.RoleMaster)
	// RoleClone has a live candidacy and does not hold the lock.
	RoleClone = Role(core.RoleClone)
	// RoleDown left a candidacy whose session has ended (crashed process or
	// lost node): it no longer counts, and its data may be behind.
	RoleDown Role = "down"
	// RoleAbsent is an allocation Nomad runs whose syncer has no candidacy in
	// Consul (starting, or unable to reach Consul). Only known with Nomad.
	RoleAbsent Role = "absent"
)

// Check health values besides Consul's own (passing, warning, critical,
// maintenance).
const (
	// HealthNoCheck: the service is registered but carries no check of its own.
	HealthNoCheck = "no check"
	// HealthUnregistered: no service registration of the instance was found.
	HealthUnregistered = "unregistered"
	// HealthUnknown: the services could not be read (the reason is a warning).
	HealthUnknown = "unknown"
)

// Instance is one row: an allocation of the group.
type Instance struct {
	// ID is the instance id: the Nomad allocation id.
	ID string `json:"id"`
	// Node is the node the instance runs on.
	Node string `json:"node,omitempty"`
	// Role is master, clone, down or absent.
	Role Role `json:"role"`
	// Term is the lock's LockIndex for the master, and the term a clone last
	// saw (published with its candidacy) for the others.
	Term uint64 `json:"term"`
	// Position is the replication position the instance published; for the
	// master, the most advanced position known in Consul (it is at least
	// there: clones only hold what it sent them).
	Position core.Position `json:"position"`
	// LagOps is how many operations the instance is behind the most advanced
	// position of a live instance (the master's Position when there is a
	// master); nil for the master itself and when the instance's position is
	// from another term (sequences restart with each term: not comparable). Published positions are about a
	// second old, so a small lag under steady writes is normal.
	LagOps *uint64 `json:"lag_ops"`
	// CaughtUp is the instance's own caught-up flag (the master always is).
	CaughtUp bool `json:"caught_up"`
	// Live tells whether the instance's Consul session holds its keys.
	Live bool `json:"live"`
	// Health is the status of the instance's Consul service checks: passing,
	// warning, critical, maintenance, HealthNoCheck, HealthUnregistered or
	// HealthUnknown.
	Health string `json:"health"`
	// ServiceID and ServiceRole describe the instance's service registration
	// (ServiceRole is its bedrock_role meta: master or clone).
	ServiceID   string `json:"service_id,omitempty"`
	ServiceRole string `json:"service_role,omitempty"`
	// AppAddress is where the instance's app answers (its service
	// registration's address and port): the master's is where traffic goes.
	AppAddress string `json:"app_address,omitempty"`
	// SyncAddress is where the instance's syncer accepts replication
	// connections while master.
	SyncAddress string `json:"sync_address,omitempty"`
	// Nomad is the allocation's client status when Nomad was asked.
	Nomad string `json:"nomad_status,omitempty"`
	// Waiting is why a candidate does not contend for a free lock (it does not hold the
	// high-water mark, say), as it published it.
	Waiting string `json:"waiting,omitempty"`
}

// Group is the state of one Bedrock group.
type Group struct {
	// Name is the task group's name.
	Name string `json:"group"`
	// KeyPrefix is where the group's election keys live in Consul.
	KeyPrefix string `json:"key_prefix"`
	// Term is the lock key's LockIndex: the current master's term, or the
	// last one when the lock is free.
	Term uint64 `json:"term"`
	// Master is the lock holder's instance id; empty when nobody holds it.
	Master string `json:"master,omitempty"`
	// Service is the Consul service the instances register (empty when none
	// was found).
	Service string `json:"service,omitempty"`
	// Instances are the rows: master first, then clones from the most caught
	// up, then allocations without a candidacy (absent), then candidacies
	// whose session ended (down).
	Instances []Instance `json:"instances"`
	// HighWater is the group's high-water mark: the position a clone must hold to be
	// promoted (nil when none was published); see syncer/lease/highwater.go.
	HighWater *lease.HighWater `json:"high_water,omitempty"`
	// Verdict and Reasons: the group's verdict and why it is not healthy.
	Verdict Verdict  `json:"verdict"`
	Reasons []string `json:"reasons,omitempty"`
	// Warnings are observations that do not change the verdict.
	Warnings []string `json:"warnings,omitempty"`
}

// Report is the whole answer for a job.
type Report struct {
	Job       string  `json:"job"`
	Namespace string  `json:"namespace"`
	Consul    string  `json:"consul"`
	Nomad     string  `json:"nomad,omitempty"`
	Groups    []Group `json:"groups"`
	// Verdict is the worst group's; ExitCode is the command's exit status.
	Verdict  Verdict `json:"verdict"`
	ExitCode int     `json:"exit_code"`
	// Warnings that concern no single group (e.g. Nomad unreachable).
	Warnings []string `json:"warnings,omitempty"`
}

// finish computes the job's verdict from its groups.
func (r *Report) finish() {
	r.Verdict = Healthy
	for _, g := range r.Groups {
		r.Verdict = Worse(r.Verdict, g.Verdict)
	}
	r.ExitCode = r.Verdict.ExitCode()
}
