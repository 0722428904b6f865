package jobspecs

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// The rules of the validator. A checker walks one parsed file: rules.go
// holds the walk over jobs, groups and tasks; rules_placement.go the
// instance count and distinct hosts; rules_wiring.go how the syncer and app
// tasks are wired; rules_failover.go the settings that slow failover.

// MinInstances is the smallest group Bedrock accepts: a master plus two
// clones, so that one node can fail while a promoted clone still has a
// replica to stream to.
const MinInstances = 3

// Hints shared by several rules.
const (
	hintLifecycle   = `add lifecycle { hook = "prestart" sidecar = true } to the syncer task`
	hintDistinct    = `add constraint { operator = "distinct_hosts" value = "true" } to the group (or the job)`
	hintMaxParallel = "set max_parallel = 1 so instances are replaced one at a time and clones stay synced"
	hintRuntime     = "pass the value with -var name=value or use a literal; the driver re-checks placement at run time"
	hintLiteral     = "pass the value with -var name=value or use a literal"
)

// checker walks one parsed file and collects diagnostics.
type checker struct {
	ev    *evaluator
	diags Diagnostics
}

func (c *checker) report(d Diagnostic) { c.diags = append(c.diags, d) }

func (c *checker) errorAt(rng hcl.Range, msg, hint string) {
	c.report(diagAt(SeverityError, rng, msg, hint))
}

func (c *checker) warnAt(rng hcl.Range, msg, hint string) {
	c.report(diagAt(SeverityWarning, rng, msg, hint))
}

// unknown warns that a value the rules need cannot be computed here.
func (c *checker) unknown(rng hcl.Range, what, hint string) {
	c.warnAt(rng, fmt.Sprintf("cannot evaluate %s statically", what), hint)
}

// checkFile applies every rule to a parsed file.
func (c *checker) checkFile(body *hclsyntax.Body, filename string) {
	jobs := blocksOf(body, "job")
	if len(jobs) == 0 {
		c.errorAt(hcl.Range{Filename: filename, Start: hcl.InitialPos}, "no job block in this file",
			`a jobspec needs a job "name" { ... } block`)
		return
	}
	for i, j := range jobs {
		if i > 0 {
			c.errorAt(j.DefRange(), "more than one job block in one file",
				"Nomad runs one job per file; move this job into its own file")
			continue
		}
		c.checkJob(j)
	}
}

func (c *checker) checkJob(j *hclsyntax.Block) {
	if len(j.Labels) != 1 {
		c.errorAt(j.DefRange(), "job block needs exactly one label, its name", `write job "name" { ... }`)
	}
	jobDistinct := c.distinct(j.Body)
	bedrock := false
	for _, g := range blocksOf(j.Body, "group") {
		if c.checkGroup(j, g, jobDistinct) {
			bedrock = true
		}
	}
	dynamic := false
	for _, d := range blocksOf(j.Body, "dynamic") {
		if blockName(d) == "group" {
			dynamic = true
			c.warnAt(d.DefRange(), "dynamic group blocks are not expanded; the groups they generate are not checked",
				"the driver re-checks placement at run time")
		}
	}
	if !bedrock {
		if !dynamic {
			c.warnAt(j.DefRange(), fmt.Sprintf("no task in job %q uses the bedrock driver; nothing to check", blockName(j)),
				`set driver = "bedrock" on the app and syncer tasks`)
		}
		return
	}
	if a := attrOf(j, "type"); a != nil {
		typ, st := c.ev.str(a, c.report)
		if st == stateKnown && typ != "service" {
			c.errorAt(a.Expr.Range(), fmt.Sprintf("job type %q cannot run Bedrock groups", typ),
				`use type = "service" (the default): Bedrock keeps a long-running master and its clones`)
		}
	}
}

// checkGroup applies the group rules and reports whether the group has any
// bedrock task (and so was subject to the policy).
func (c *checker) checkGroup(j, gb *hclsyntax.Block, jobDistinct distinctResult) bool {
	g := &group{block: gb, name: blockName(gb), ports: map[string]bool{}}
	if len(gb.Labels) != 1 {
		c.errorAt(gb.DefRange(), "group block needs exactly one label, its name", `write group "name" { ... }`)
	}
	for _, nw := range blocksOf(gb.Body, "network") {
		for _, p := range blocksOf(nw.Body, "port") {
			g.ports[blockName(p)] = true
		}
	}
	for _, tb := range blocksOf(gb.Body, "task") {
		g.tasks = append(g.tasks, c.classify(tb))
		if d := c.distinct(tb.Body); d.state == distinctYes || d.state == distinctDisabled {
			c.errorAt(d.rng, fmt.Sprintf("task %q sets a distinct hosts constraint, which Nomad only accepts on a job or group", blockName(tb)),
				"move the constraint into the group")
		}
	}
	for _, d := range blocksOf(gb.Body, "dynamic") {
		if blockName(d) == "task" {
			c.warnAt(d.DefRange(), "dynamic task blocks are not expanded; the tasks they generate are not checked",
				"write the bedrock tasks as plain task blocks")
		}
	}

	var apps, syncers []*task
	bedrock := false
	for _, t := range g.tasks {
		switch t.kind {
		case kindApp:
			apps = append(apps, t)
		case kindSyncer:
			syncers = append(syncers, t)
		case kindBoth:
			c.errorAt(t.block.DefRange(), fmt.Sprintf("task %q has both image and a syncer block", t.name),
				"a bedrock task is either the app (image) or the syncer (syncer block); split it into two tasks")
		case kindNeither:
			c.errorAt(t.block.DefRange(), fmt.Sprintf("bedrock task %q has neither image nor a syncer block", t.name),
				`set image = "..." for the app task, or add syncer { port = "sync" } to the syncer task's config`)
		}
		if t.kind != kindOther && t.kind != kindUnknown {
			bedrock = true
		}
	}
	if !bedrock {
		return false
	}

	c.checkPlacement(g, jobDistinct)

	for _, t := range apps[min(1, len(apps)):] {
		c.errorAt(t.block.DefRange(), fmt.Sprintf("group %q has more than one bedrock app task (%q and %q)", g.name, apps[0].name, t.name),
			"one app per group: move the other app into its own group or job")
	}
	for _, t := range syncers[min(1, len(syncers)):] {
		c.errorAt(t.block.DefRange(), fmt.Sprintf("group %q has more than one syncer task (%q and %q)", g.name, syncers[0].name, t.name),
			"keep one syncer task per group")
	}
	switch {
	case len(syncers) > 0 && len(apps) == 0:
		c.errorAt(syncers[0].block.DefRange(), fmt.Sprintf("group %q has a syncer task but no bedrock app task", g.name),
			`add the app task (driver = "bedrock" with image = "...") or remove the syncer`)
	case len(apps) > 0 && len(syncers) == 0:
		app := apps[0]
		if attrOf(app.config, "data") != nil {
			c.errorAt(app.block.DefRange(), fmt.Sprintf("group %q has no syncer task, so the data of task %q is not replicated", g.name, app.name),
				`add a syncer task: driver = "bedrock", lifecycle { hook = "prestart" sidecar = true }, config { syncer { port = "sync" } }`)
		} else {
			c.warnAt(app.block.DefRange(), fmt.Sprintf("group %q has no syncer task: task %q runs on every instance and nothing is replicated", g.name, app.name),
				"fine for a stateless app; for state, add a syncer task and set data on the app")
		}
	}
	if len(syncers) > 0 {
		c.checkSyncer(g, syncers[0])
		c.checkServices(g)
	}
	for _, app := range apps {
		c.checkApp(g, app, len(syncers) > 0)
	}
	if len(apps) > 0 {
		c.checkRestart(g, apps[0])
		c.checkUpdate(j, g)
		c.checkMigrate(j, g)
		c.checkReschedule(j, g)
		c.checkDisconnect(g)
	}
	return true
}

// classify tells the app task from the syncer task by their config, the way
// the driver does: an image makes an app, a syncer block makes a syncer.
func (c *checker) classify(tb *hclsyntax.Block) *task {
	t := &task{block: tb, name: blockName(tb), config: blockOf(tb.Body, "config")}
	if len(tb.Labels) != 1 {
		c.errorAt(tb.DefRange(), "task block needs exactly one label, its name", `write task "name" { ... }`)
	}
	driverAttr := tb.Body.Attributes["driver"]
	driver, st := c.ev.str(driverAttr, c.report)
	switch {
	case st == stateUnknown:
		c.unknown(driverAttr.Expr.Range(), fmt.Sprintf("the driver of task %q", t.name), hintLiteral)
		t.kind = kindUnknown
		return t
	case st != stateKnown || driver != "bedrock":
		t.kind = kindOther
		return t
	}
	hasImage := attrOf(t.config, "image") != nil
	hasSyncer := attrOf(t.config, "syncer") != nil || (t.config != nil && blockOf(t.config.Body, "syncer") != nil)
	switch {
	case hasImage && hasSyncer:
		t.kind = kindBoth
	case hasImage:
		t.kind = kindApp
	case hasSyncer:
		t.kind = kindSyncer
	default:
		t.kind = kindNeither
	}
	return t
}
