package jobspecs

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

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
	expr := a.Expr
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
