package jobspecs

import (
	"fmt"
	"strconv"

	"github.com/hashicorp/nomad/api"
)

// DriverName is the task driver name the placement policy applies to.
const DriverName = "bedrock"

// OptOutFlag is the plugin config option that turns runtime refusals into
// warnings. It exists for labs and single-node trials; the refusal message
// names it so an operator can find it, and its name says what it costs.
const OptOutFlag = "allow_unsafe_placement"

// Stable identifiers of the runtime rules, for logs and tests.
const (
	RuleCount         = "count"
	RuleScalingMin    = "scaling-min"
	RuleDistinctHosts = "distinct-hosts"
)

// Violation is one way a live job's group breaks the placement policy.
type Violation struct {
	Group   string // task group name
	Rule    string // RuleCount, RuleScalingMin or RuleDistinctHosts
	Message string // what is wrong
	Hint    string // what to change in the jobspec
}

// String formats the violation as "message; hint: hint".
func (v Violation) String() string { return v.Message + "; hint: " + v.Hint }

// CheckJob applies the placement policy to one group of a job as returned by
// Nomad's job API: the group must keep at least [MinInstances] instances
// (count and scaling min) on distinct nodes (a distinct_hosts constraint, or
// distinct_property on the node's unique id or name, at job or group level).
// It is pure, so the driver's runtime check and tests share it. It returns nil
// when the group complies, when it does not exist in job, or when none of its
// tasks uses the bedrock driver (the policy does not concern it).
func CheckJob(job *api.Job, group string) []Violation {
	if job == nil {
		return nil
	}
	tg := findGroup(job, group)
	if tg == nil || !hasBedrockTask(tg) {
		return nil
	}
	var out []Violation
	// Nomad's defaults when a jobspec omits count: the scaling min, else 1.
	count := 1
	switch {
	case tg.Count != nil:
		count = *tg.Count
	case tg.Scaling != nil && tg.Scaling.Min != nil:
		count = int(*tg.Scaling.Min)
	}
	if count < MinInstances {
		out = append(out, Violation{Group: group, Rule: RuleCount,
			Message: fmt.Sprintf("group %q has count = %d, fewer than the %d instances Bedrock needs for failover", group, count, MinInstances),
			Hint:    fmt.Sprintf("set count = %d or more in the group", MinInstances)})
	}
	if tg.Scaling != nil && tg.Scaling.Min != nil && *tg.Scaling.Min < MinInstances {
		out = append(out, Violation{Group: group, Rule: RuleScalingMin,
			Message: fmt.Sprintf("group %q has scaling min = %d, which lets it shrink below %d instances", group, *tg.Scaling.Min, MinInstances),
			Hint:    fmt.Sprintf("set min = %d or more in the group's scaling block", MinInstances)})
	}
	if !hasDistinctHosts(job.Constraints) && !hasDistinctHosts(tg.Constraints) {
		out = append(out, Violation{Group: group, Rule: RuleDistinctHosts,
			Message: fmt.Sprintf("group %q has no distinct_hosts constraint, so several instances may share a node", group),
			Hint:    `add constraint { operator = "distinct_hosts" value = "true" } to the group or the job`})
	}
	return out
}

func findGroup(job *api.Job, name string) *api.TaskGroup {
	for _, tg := range job.TaskGroups {
		if tg != nil && tg.Name != nil && *tg.Name == name {
			return tg
		}
	}
	return nil
}

func hasBedrockTask(tg *api.TaskGroup) bool {
	for _, t := range tg.Tasks {
		if t != nil && t.Driver == DriverName {
			return true
		}
	}
	return false
}

// hasDistinctHosts reports whether the constraints put every instance on its
// own node. An empty distinct_hosts value means true, as in Nomad.
func hasDistinctHosts(cs []*api.Constraint) bool {
	for _, c := range cs {
		if c == nil {
			continue
		}
		switch c.Operand {
		case api.ConstraintDistinctHosts:
			if c.RTarget == "" {
				return true
			}
			if b, err := strconv.ParseBool(c.RTarget); err == nil && b {
				return true
			}
		case api.ConstraintDistinctProperty:
			unique := c.LTarget == "${node.unique.id}" || c.LTarget == "${node.unique.name}"
			if unique && (c.RTarget == "" || c.RTarget == "1") {
				return true
			}
		}
	}
	return false
}
