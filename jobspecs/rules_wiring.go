package jobspecs

import (
	"fmt"
	"strings"
)

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
