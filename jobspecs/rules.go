package jobspecs

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// MinInstances is the smallest group Bedrock accepts: a master plus two
// clones, so that one node can fail while a promoted clone still has a
// replica to stream to.
const MinInstances = 3

// Thresholds of the failover warnings. They are deliberately round numbers:
// Bedrock promotes a clone within seconds, so anything that keeps a broken
// master in place for longer than these is worth a second look.
const (
	// maxRestartDowntime bounds attempts x delay of the app's restart policy.
	maxRestartDowntime = 10 * time.Second
	// minHealthyTime is the shortest update min_healthy_time that leaves a
	// replacement clone time to finish its initial sync.
	minHealthyTime = 10 * time.Second
	// maxRescheduleDelay bounds how long a group stays short of a clone.
	maxRescheduleDelay = 30 * time.Second
)

// Nomad's defaults for service jobs, used when a jobspec sets nothing.
const (
	defaultRestartAttempts = 2
	defaultRestartDelay    = 15 * time.Second
	defaultRestartMode     = "fail"
)

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

// distinctState is what a set of constraint blocks says about distinct hosts.
type distinctState int

const (
	distinctAbsent   distinctState = iota // no such constraint
	distinctDisabled                      // present but set to false
	distinctUnknown                       // present, value not computable here
	distinctYes                           // instances land on distinct nodes
)

// distinctResult is a distinctState with the position to blame.
type distinctResult struct {
	state distinctState
	rng   hcl.Range
}

// distinct inspects the constraint blocks of body. It accepts the three
// spellings Nomad does: operator = "distinct_hosts" (value "true" or no
// value), the attribute form distinct_hosts = true, and distinct_property on
// the node's unique id or name, which has the same effect.
func (c *checker) distinct(body *hclsyntax.Body) distinctResult {
	best := distinctResult{state: distinctAbsent}
	consider := func(st distinctState, rng hcl.Range) {
		if st > best.state {
			best = distinctResult{state: st, rng: rng}
		}
	}
	fromBool := func(a *hclsyntax.Attribute) {
		v, st := c.ev.boolean(a, c.report)
		switch {
		case st == stateUnknown:
			consider(distinctUnknown, a.Expr.Range())
		case st == stateKnown && v:
			consider(distinctYes, a.Expr.Range())
		case st == stateKnown:
			consider(distinctDisabled, a.Expr.Range())
		}
	}
	for _, cb := range blocksOf(body, "constraint") {
		if a := attrOf(cb, "distinct_hosts"); a != nil {
			fromBool(a)
			continue
		}
		opAttr := attrOf(cb, "operator")
		op, st := c.ev.str(opAttr, c.report)
		switch {
		case st == stateUnknown:
			consider(distinctUnknown, opAttr.Expr.Range())
		case st != stateKnown:
		case op == "distinct_hosts":
			if v := attrOf(cb, "value"); v != nil {
				fromBool(v)
			} else {
				consider(distinctYes, cb.DefRange())
			}
		case op == "distinct_property" && isUniqueNodeTarget(attrOf(cb, "attribute")):
			limit, lst := c.ev.integer(attrOf(cb, "value"), c.report)
			if lst == stateAbsent || (lst == stateKnown && limit == 1) {
				consider(distinctYes, cb.DefRange())
			}
		}
	}
	return best
}

// isUniqueNodeTarget reports whether a constraint attribute is
// "${node.unique.id}" or "${node.unique.name}".
func isUniqueNodeTarget(a *hclsyntax.Attribute) bool {
	if a == nil {
		return false
	}
	var expr hclsyntax.Expression = a.Expr
	if w, ok := expr.(*hclsyntax.TemplateWrapExpr); ok {
		expr = w.Wrapped
	}
	st, ok := expr.(*hclsyntax.ScopeTraversalExpr)
	if !ok {
		return false
	}
	var parts []string
	for _, step := range st.Traversal {
		switch s := step.(type) {
		case hcl.TraverseRoot:
			parts = append(parts, s.Name)
		case hcl.TraverseAttr:
			parts = append(parts, s.Name)
		default:
			return false
		}
	}
	p := strings.Join(parts, ".")
	return p == "node.unique.id" || p == "node.unique.name"
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

// checkPlacement enforces at least MinInstances instances on distinct nodes.
func (c *checker) checkPlacement(g *group, jobDistinct distinctResult) {
	scalingMin := attrOf(blockOf(g.block.Body, "scaling"), "min")
	countAttr := g.block.Body.Attributes["count"]
	n, st := c.ev.integer(countAttr, c.report)
	switch {
	case st == stateAbsent && scalingMin != nil:
		// Nomad then starts the group at its scaling min, checked below.
	case st == stateAbsent:
		c.errorAt(g.block.DefRange(),
			fmt.Sprintf("group %q has no count, so Nomad runs 1 instance; Bedrock needs at least %d", g.name, MinInstances),
			fmt.Sprintf("add count = %d (or more) to the group", MinInstances))
	case st == stateKnown && n < MinInstances:
		c.errorAt(countAttr.Expr.Range(),
			fmt.Sprintf("count = %d runs fewer than %d instances; Bedrock needs at least %d for failover", n, MinInstances, MinInstances),
			fmt.Sprintf("set count = %d or more", MinInstances))
	case st == stateUnknown:
		c.unknown(countAttr.Expr.Range(), "count", hintRuntime)
	}

	if minAttr := scalingMin; minAttr != nil {
		m, st := c.ev.integer(minAttr, c.report)
		switch {
		case st == stateKnown && m < MinInstances:
			c.errorAt(minAttr.Expr.Range(),
				fmt.Sprintf("scaling min = %d lets the group shrink below %d instances", m, MinInstances),
				fmt.Sprintf("set min = %d or more", MinInstances))
		case st == stateUnknown:
			c.unknown(minAttr.Expr.Range(), "scaling min", hintRuntime)
		}
	}

	gd := c.distinct(g.block.Body)
	switch {
	case jobDistinct.state == distinctYes || gd.state == distinctYes:
	case gd.state == distinctUnknown:
		c.unknown(gd.rng, "distinct_hosts", hintRuntime)
	case jobDistinct.state == distinctUnknown:
		c.unknown(jobDistinct.rng, "distinct_hosts", hintRuntime)
	case gd.state == distinctDisabled || jobDistinct.state == distinctDisabled:
		rng := gd.rng
		if gd.state != distinctDisabled {
			rng = jobDistinct.rng
		}
		c.errorAt(rng, "distinct_hosts is disabled, so Nomad may place several instances on one node",
			`set the constraint's value to "true"`)
	default:
		c.errorAt(g.block.DefRange(),
			fmt.Sprintf("group %q has no distinct_hosts constraint, so Nomad may place several instances on one node", g.name),
			hintDistinct)
	}
}

// checkSyncer checks the syncer runs as a prestart sidecar on a declared port.
func (c *checker) checkSyncer(g *group, s *task) {
	if lc := blockOf(s.block.Body, "lifecycle"); lc == nil {
		c.errorAt(s.block.DefRange(), fmt.Sprintf("syncer task %q has no lifecycle block; it must be a prestart sidecar", s.name), hintLifecycle)
	} else {
		hookAttr := attrOf(lc, "hook")
		hook, st := c.ev.str(hookAttr, c.report)
		switch {
		case st == stateAbsent:
			c.errorAt(lc.DefRange(), fmt.Sprintf("syncer task %q has no lifecycle hook; it must be a prestart sidecar", s.name), hintLifecycle)
		case st == stateKnown && hook != "prestart":
			c.errorAt(hookAttr.Expr.Range(), fmt.Sprintf("syncer task %q has lifecycle hook %q; it must be \"prestart\"", s.name, hook),
				`set hook = "prestart" so the syncer elects and syncs before the app starts`)
		case st == stateUnknown:
			c.unknown(hookAttr.Expr.Range(), "lifecycle hook", hintLiteral)
		}
		sidecarAttr := attrOf(lc, "sidecar")
		sidecar, st := c.ev.boolean(sidecarAttr, c.report)
		switch {
		case st == stateAbsent:
			c.errorAt(lc.DefRange(), fmt.Sprintf("syncer task %q is not a sidecar (sidecar is not set)", s.name),
				"set sidecar = true so the syncer keeps running beside the app")
		case st == stateKnown && !sidecar:
			c.errorAt(sidecarAttr.Expr.Range(), fmt.Sprintf("syncer task %q is not a sidecar (sidecar = false)", s.name),
				"set sidecar = true so the syncer keeps running beside the app")
		case st == stateUnknown:
			c.unknown(sidecarAttr.Expr.Range(), "lifecycle sidecar", hintLiteral)
		}
	}

	if a := attrOf(s.config, "syncer"); a != nil {
		c.errorAt(a.SrcRange, "syncer must be a block, not an attribute", `write syncer { port = "sync" } inside config`)
		return
	}
	sb := blockOf(s.config.Body, "syncer")
	portAttr := attrOf(sb, "port")
	port, st := c.ev.str(portAttr, c.report)
	switch {
	case st == stateAbsent:
		c.errorAt(sb.DefRange(), fmt.Sprintf("syncer block of task %q has no port", s.name),
			`set port = "sync" and declare port "sync" {} in the group's network block`)
	case st == stateKnown && !g.ports[port]:
		c.errorAt(portAttr.Expr.Range(), fmt.Sprintf("syncer port %q is not declared in the group's network block", port),
			fmt.Sprintf("add port %q {} to the group's network block", port))
	}
	metricsAttr := attrOf(sb, "metrics_port")
	metrics, st := c.ev.str(metricsAttr, c.report)
	if st == stateKnown && !g.ports[metrics] {
		c.errorAt(metricsAttr.Expr.Range(), fmt.Sprintf("syncer metrics_port %q is not declared in the group's network block", metrics),
			fmt.Sprintf("add port %q {} to the group's network block", metrics))
	}
}

// checkApp checks the app's image, data path and port labels.
func (c *checker) checkApp(g *group, app *task, withSyncer bool) {
	imageAttr := attrOf(app.config, "image")
	if image, st := c.ev.str(imageAttr, c.report); st == stateKnown && strings.TrimSpace(image) == "" {
		c.errorAt(imageAttr.Expr.Range(), fmt.Sprintf("image of task %q is empty", app.name), `set image = "name:tag"`)
	}
	dataAttr := attrOf(app.config, "data")
	data, st := c.ev.str(dataAttr, c.report)
	switch {
	case st == stateAbsent && withSyncer:
		c.errorAt(app.config.DefRange(), fmt.Sprintf("app task %q has no data path, so the syncer has nothing to replicate", app.name),
			`set data = "/data" (where the app keeps its state inside the container)`)
	case st == stateKnown && !strings.HasPrefix(data, "/"):
		c.errorAt(dataAttr.Expr.Range(), fmt.Sprintf("data path %q of task %q must be absolute", data, app.name),
			`use an absolute path inside the container, e.g. "/data"`)
	}
	portsAttr := attrOf(app.config, "ports")
	ports, st := c.ev.strList(portsAttr, c.report)
	if st == stateKnown {
		for _, p := range ports {
			if !g.ports[p] {
				c.errorAt(portsAttr.Expr.Range(), fmt.Sprintf("port %q of task %q is not declared in the group's network block", p, app.name),
					fmt.Sprintf("add port %q {} to the group's network block", p))
			}
		}
	}
}

// checkServices warns about Nomad service blocks that carry Traefik tags: Nomad
// registers them for every instance, clones included, which do not run the
// app. The syncer's own tags are given to the master only.
func (c *checker) checkServices(g *group) {
	services := blocksOf(g.block.Body, "service")
	for _, t := range g.tasks {
		services = append(services, blocksOf(t.block.Body, "service")...)
	}
	for _, svc := range services {
		tagsAttr := attrOf(svc, "tags")
		tags, st := c.ev.strList(tagsAttr, c.report)
		if st != stateKnown {
			continue
		}
		for _, tag := range tags {
			if strings.HasPrefix(tag, "traefik.") {
				c.warnAt(tagsAttr.Expr.Range(),
					"this Nomad service carries Traefik tags on every instance, so Traefik may route to clones, which do not run the app",
					"move these tags to the syncer block's tags: the syncer gives them only to the master")
				break
			}
		}
	}
}

// checkRestart warns when the app's restart policy keeps a crashed master in
// place: while Nomad restarts the app locally the syncer still holds the lock,
// so no clone can take over until the allocation fails.
func (c *checker) checkRestart(g *group, app *task) {
	attempts, delay, mode := int64(defaultRestartAttempts), defaultRestartDelay, defaultRestartMode
	var modeRng hcl.Range
	where := app.block.DefRange()
	defaulted, unknown := true, false
	for _, rb := range []*hclsyntax.Block{blockOf(g.block.Body, "restart"), blockOf(app.block.Body, "restart")} {
		if rb == nil {
			continue
		}
		defaulted = false
		where = rb.DefRange()
		if v, st := c.ev.integer(attrOf(rb, "attempts"), c.report); st == stateKnown {
			attempts = v
		} else if st != stateAbsent {
			unknown = true
		}
		if v, st := c.ev.duration(attrOf(rb, "delay"), c.report); st == stateKnown {
			delay = v
		} else if st != stateAbsent {
			unknown = true
		}
		if v, st := c.ev.str(attrOf(rb, "mode"), c.report); st == stateKnown {
			mode, modeRng = v, attrOf(rb, "mode").Expr.Range()
		}
	}
	if mode == "delay" {
		c.warnAt(modeRng, `restart mode "delay" keeps restarting a crashed master's app and never hands over to a clone`,
			`use mode = "fail" so the allocation fails and a clone takes over`)
		return
	}
	total := time.Duration(attempts) * delay
	if unknown || total <= maxRestartDowntime {
		return
	}
	hint := `lower attempts and delay, e.g. restart { attempts = 1 delay = "2s" mode = "fail" }`
	if defaulted {
		c.warnAt(where, fmt.Sprintf("no restart block: Nomad's default (%d attempts x %s delay) can keep a crashed master's app down for %s before a clone takes over",
			attempts, delay, total), hint)
		return
	}
	c.warnAt(where, fmt.Sprintf("restart policy (%d attempts x %s delay) can keep a crashed master's app down for %s before a clone takes over",
		attempts, delay, total), hint)
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
