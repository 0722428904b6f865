package status

import (
	"fmt"
	"strings"
)

// Counts are the numbers a group's verdict rests on.
type Counts struct {
	// Masters is the number of rows holding the lock (0 or 1: the lock has
	// one holder at most).
	Masters int `json:"masters"`
	// CaughtUpClones counts live clones that report being caught up: the
	// instances a failover can promote without losing data.
	CaughtUpClones int `json:"caught_up_clones"`
	// Instances counts the live instances (master and clones) plus those
	// Nomad runs without a candidacy yet.
	Instances int `json:"instances"`
}

// Count tallies a group's rows.
func Count(g *Group) Counts {
	var c Counts
	for _, in := range g.Instances {
		switch in.Role {
		case RoleMaster:
			c.Masters++
			c.Instances++
		case RoleClone:
			c.Instances++
			if in.Live && in.CaughtUp {
				c.CaughtUpClones++
			}
		case RoleAbsent:
			c.Instances++
		}
	}
	return c
}

// Evaluate sets the group's verdict and the reasons it is not healthy:
// NoMaster when nobody holds the lock; Degraded when there is a master but
// fewer than MinCaughtUpClones live caught-up clones, fewer than
// MinInstances instances, or an instance other than the lock holder is
// registered as master in Consul (traffic could reach it); Healthy otherwise.
// Rows that are down or not caught up count only through the thresholds: a
// replaced allocation leaves its candidacy behind without a session, and a
// group with enough other clones is healthy. It is pure: rows in, verdict out.
func Evaluate(g *Group) {
	g.Reasons = nil
	c := Count(g)
	if g.Master == "" {
		g.Verdict = NoMaster
		why := "nobody holds the lock"
		if g.Term > 0 {
			why += fmt.Sprintf(" (last term %d)", g.Term)
		}
		g.Reasons = append(g.Reasons, why)
		g.Reasons = append(g.Reasons, otherReasons(g, c)...)
		return
	}
	g.Reasons = otherReasons(g, c)
	g.Verdict = Healthy
	if len(g.Reasons) > 0 {
		g.Verdict = Degraded
	}
}

// otherReasons lists what keeps a group with a master from being healthy.
func otherReasons(g *Group, c Counts) []string {
	var out []string
	if c.CaughtUpClones < MinCaughtUpClones {
		out = append(out, fmt.Sprintf("%s, want at least %d", plural(c.CaughtUpClones, "live caught-up clone"), MinCaughtUpClones))
	}
	if c.Instances < MinInstances {
		out = append(out, fmt.Sprintf("%s, want at least %d", plural(c.Instances, "instance"), MinInstances))
	}
	for _, in := range g.Instances {
		if in.ServiceRole == string(RoleMaster) && in.Role != RoleMaster {
			out = append(out, fmt.Sprintf("%s is registered as master in Consul but does not hold the lock", in.ID))
		}
	}
	return out
}

// Summary is the group's verdict line without its name, e.g.
// "healthy: 1 master, 2 live caught-up clones, 3 instances".
func Summary(g *Group) string {
	c := Count(g)
	s := fmt.Sprintf("%s: %s, %s, %s", g.Verdict, plural(c.Masters, "master"),
		plural(c.CaughtUpClones, "live caught-up clone"), plural(c.Instances, "instance"))
	if len(g.Reasons) > 0 {
		s += "; " + strings.Join(g.Reasons, "; ")
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, what)
	}
	return fmt.Sprintf("%d %ss", n, what)
}
