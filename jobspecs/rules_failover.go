package jobspecs

import (
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Thresholds of the failover warnings. They are deliberately round numbers:
// Bedrock promotes a clone within seconds, so anything that keeps a broken
// master in place for longer than these is worth a second look.
const (
	// minHealthyTime is the shortest update min_healthy_time that leaves a
	// replacement clone time to finish its initial sync.
	minHealthyTime = 10 * time.Second
	// maxRescheduleDelay bounds how long a group stays short of a clone.
	maxRescheduleDelay = 30 * time.Second
)

// checkRestart reads the app's restart blocks for malformed values only. A crashed app on the
// master is no reason for a warning, whatever its restart block: the driver tells the syncer,
// which hands the lock to a caught-up clone at once; the restart block only decides when the
// instance comes back, as a clone.
func (c *checker) checkRestart(g *group, app *task) {
	for _, rb := range []*hclsyntax.Block{blockOf(g.block.Body, "restart"), blockOf(app.block.Body, "restart")} {
		if rb == nil {
			continue
		}
		c.ev.integer(attrOf(rb, "attempts"), c.report)
		c.ev.duration(attrOf(rb, "delay"), c.report)
		c.ev.str(attrOf(rb, "mode"), c.report)
	}
}

// overlay returns the attribute from the group's block if set, else from the
// job's: Nomad merges update and reschedule settings that way.
func overlay(jobBlock, groupBlock *hclsyntax.Block, name string) *hclsyntax.Attribute {
	if a := attrOf(groupBlock, name); a != nil {
		return a
	}
	return attrOf(jobBlock, name)
}

// checkUpdate warns about rolling updates that could replace the master
// together with its clones, or before a replacement clone has caught up.
func (c *checker) checkUpdate(j *hclsyntax.Block, g *group) {
	ju, gu := blockOf(j.Body, "update"), blockOf(g.block.Body, "update")
	mpAttr := overlay(ju, gu, "max_parallel")
	if n, st := c.ev.integer(mpAttr, c.report); st == stateKnown {
		switch {
		case n == 0:
			c.warnAt(mpAttr.Expr.Range(), "update max_parallel = 0 replaces all instances at once, the master included", hintMaxParallel)
		case n > 1:
			c.warnAt(mpAttr.Expr.Range(), fmt.Sprintf("update max_parallel = %d can replace the master together with clones", n), hintMaxParallel)
		}
	}
	mhAttr := overlay(ju, gu, "min_healthy_time")
	if d, st := c.ev.duration(mhAttr, c.report); st == stateKnown && d < minHealthyTime {
		c.warnAt(mhAttr.Expr.Range(),
			fmt.Sprintf("update min_healthy_time = %s can mark a replacement healthy before its initial sync ends, so the next replacement may take the master while no clone is current", d),
			`set min_healthy_time = "30s" or more (longer than an initial sync of your data)`)
	}
}

// checkReschedule warns when a failed instance is never, or only slowly,
// replaced: until it is, the group runs short of a clone.
func (c *checker) checkReschedule(j *hclsyntax.Block, g *group) {
	jr, gr := blockOf(j.Body, "reschedule"), blockOf(g.block.Body, "reschedule")
	unlAttr := overlay(jr, gr, "unlimited")
	unlimited, ust := c.ev.boolean(unlAttr, c.report)
	attempts, ast := c.ev.integer(overlay(jr, gr, "attempts"), c.report)
	if ust == stateKnown && !unlimited && (ast == stateAbsent || (ast == stateKnown && attempts == 0)) {
		c.warnAt(unlAttr.Expr.Range(), "reschedule never replaces a failed instance (unlimited = false, attempts = 0), so the group stays short of a clone",
			"set unlimited = true, or attempts > 0")
	}
	delayAttr := overlay(jr, gr, "delay")
	if d, st := c.ev.duration(delayAttr, c.report); st == stateKnown && d > maxRescheduleDelay {
		c.warnAt(delayAttr.Expr.Range(), fmt.Sprintf("reschedule delay = %s leaves the group short of a clone that long after an instance fails", d),
			`set delay = "5s" to "30s"`)
	}
}

// checkMigrate warns when a node drain may move several instances at once,
// which can take the master and a clone down together.
func (c *checker) checkMigrate(j *hclsyntax.Block, g *group) {
	mpAttr := overlay(blockOf(j.Body, "migrate"), blockOf(g.block.Body, "migrate"), "max_parallel")
	if n, st := c.ev.integer(mpAttr, c.report); st == stateKnown && n > 1 {
		c.warnAt(mpAttr.Expr.Range(), fmt.Sprintf("migrate max_parallel = %d can move the master together with clones when nodes drain", n),
			"set max_parallel = 1 in the migrate block")
	}
}

// checkDisconnect warns when an instance on a disconnected node is never
// replaced: the group then runs short of a clone until the node returns.
func (c *checker) checkDisconnect(g *group) {
	replaceAttr := attrOf(blockOf(g.block.Body, "disconnect"), "replace")
	if replace, st := c.ev.boolean(replaceAttr, c.report); st == stateKnown && !replace {
		c.warnAt(replaceAttr.Expr.Range(), "disconnect replace = false leaves the group short of a clone while a node is disconnected",
			"remove replace = false so Nomad places a replacement clone")
	}
}
