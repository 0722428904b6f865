package jobspecs

import (
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// evalState says what the validator could learn from an attribute.
type evalState int

const (
	// stateAbsent: the attribute is not written (or is null), Nomad's default applies.
	stateAbsent evalState = iota
	// stateKnown: the value was computed statically.
	stateKnown
	// stateUnknown: the value depends on something only Nomad knows (an
	// input variable without default, a function, ${node...}); the rule
	// concerned is skipped or downgraded to a warning.
	stateUnknown
	// stateInvalid: the value is wrong whatever the inputs; an error has
	// already been reported.
	stateInvalid
)

// evaluator computes attribute values as far as it can without Nomad:
// `var.*` resolves to literal defaults of `variable` blocks (or -var
// overrides), `local.*` to locals computable from those, and a few pure
// functions of Nomad's HCL standard library are available (see functions);
// nothing else.
// Expressions that need more evaluate to unknown instead of failing, which is
// what keeps the validator from crashing or guessing on real-world files.
type evaluator struct {
	ctx *hcl.EvalContext
}

// newEvaluator reads the file's variable and locals blocks. overrides are
// -var name=value pairs; like Nomad, they take precedence over defaults and
// arrive as strings, which cty converts to the type a rule needs.
func newEvaluator(body *hclsyntax.Body, overrides map[string]string) *evaluator {
	vars := map[string]cty.Value{}
	for _, b := range body.Blocks {
		if b.Type != "variable" || len(b.Labels) != 1 {
			continue
		}
		name := b.Labels[0]
		vars[name] = cty.DynamicVal
		if a, ok := b.Body.Attributes["default"]; ok {
			if v, diags := a.Expr.Value(nil); !diags.HasErrors() && v.IsWhollyKnown() {
				vars[name] = v
			}
		}
	}
	for name, val := range overrides {
		vars[name] = overrideValue(val)
	}

	var localAttrs []*hclsyntax.Attribute
	for _, b := range body.Blocks {
		if b.Type != "locals" {
			continue
		}
		for _, a := range b.Body.Attributes {
			localAttrs = append(localAttrs, a)
		}
	}
	locals := map[string]cty.Value{}
	for _, a := range localAttrs {
		locals[a.Name] = cty.DynamicVal
	}
	ev := &evaluator{ctx: &hcl.EvalContext{Functions: functions}}
	// Locals may refer to each other in any order; every pass resolves at
	// least one more of them or stops, so len+1 passes reach the fixed point.
	for pass := 0; pass <= len(localAttrs); pass++ {
		ev.ctx.Variables = map[string]cty.Value{"var": cty.ObjectVal(vars), "local": cty.ObjectVal(locals)}
		progress := false
		for _, a := range localAttrs {
			if locals[a.Name].IsWhollyKnown() {
				continue
			}
			if v, diags := a.Expr.Value(ev.ctx); !diags.HasErrors() && v.IsWhollyKnown() {
				locals[a.Name] = v
				progress = true
			}
		}
		if !progress {
			break
		}
	}
	ev.ctx.Variables = map[string]cty.Value{"var": cty.ObjectVal(vars), "local": cty.ObjectVal(locals)}
	return ev
}

// overrideValue turns a -var value into a cty value. Like Nomad, a value
// written as an HCL list or object literal is parsed as one; anything else is
// a string, which converts to the number or bool a rule needs.
func overrideValue(raw string) cty.Value {
	trimmed := strings.TrimSpace(raw)
	if strings.HasPrefix(trimmed, "[") || strings.HasPrefix(trimmed, "{") {
		if expr, diags := hclsyntax.ParseExpression([]byte(trimmed), "-var", hcl.InitialPos); !diags.HasErrors() {
			if v, diags := expr.Value(nil); !diags.HasErrors() && v.IsWhollyKnown() {
				return v
			}
		}
	}
	return cty.StringVal(raw)
}

// functions are the pure, cheap functions of Nomad's HCL standard library
// that commonly compute counts, names and paths. Any other function makes an
// expression unknown rather than wrong.
var functions = map[string]function.Function{
	"abs":        stdlib.AbsoluteFunc,
	"ceil":       stdlib.CeilFunc,
	"coalesce":   stdlib.CoalesceFunc,
	"concat":     stdlib.ConcatFunc,
	"contains":   stdlib.ContainsFunc,
	"element":    stdlib.ElementFunc,
	"floor":      stdlib.FloorFunc,
	"format":     stdlib.FormatFunc,
	"join":       stdlib.JoinFunc,
	"keys":       stdlib.KeysFunc,
	"length":     stdlib.LengthFunc,
	"lookup":     stdlib.LookupFunc,
	"lower":      stdlib.LowerFunc,
	"max":        stdlib.MaxFunc,
	"merge":      stdlib.MergeFunc,
	"min":        stdlib.MinFunc,
	"parseint":   stdlib.ParseIntFunc,
	"split":      stdlib.SplitFunc,
	"tobool":     stdlib.MakeToFunc(cty.Bool),
	"tonumber":   stdlib.MakeToFunc(cty.Number),
	"tostring":   stdlib.MakeToFunc(cty.String),
	"trim":       stdlib.TrimFunc,
	"trimprefix": stdlib.TrimPrefixFunc,
	"trimspace":  stdlib.TrimSpaceFunc,
	"trimsuffix": stdlib.TrimSuffixFunc,
	"upper":      stdlib.UpperFunc,
	"values":     stdlib.ValuesFunc,
}

// eval computes expr. When evaluation fails only because the expression
// refers to variables or calls functions, the value is unknown, not invalid.
func (e *evaluator) eval(expr hclsyntax.Expression) (cty.Value, evalState, hcl.Diagnostics) {
	v, diags := expr.Value(e.ctx)
	if diags.HasErrors() {
		if isDynamic(expr) {
			return cty.DynamicVal, stateUnknown, nil
		}
		return cty.NilVal, stateInvalid, diags
	}
	if !v.IsWhollyKnown() {
		return cty.DynamicVal, stateUnknown, nil
	}
	if v.IsNull() {
		return v, stateAbsent, nil
	}
	return v, stateKnown, nil
}

// isDynamic reports whether expr refers to any variable or calls a function
// this validator does not have, the things Nomad resolves and it may not.
func isDynamic(expr hclsyntax.Expression) bool {
	if len(expr.Variables()) > 0 {
		return true
	}
	dynamic := false
	_ = hclsyntax.VisitAll(expr, func(n hclsyntax.Node) hcl.Diagnostics {
		if call, ok := n.(*hclsyntax.FunctionCallExpr); ok {
			if _, known := functions[call.Name]; !known {
				dynamic = true
			}
		}
		return nil
	})
	return dynamic
}

// typed evaluates attribute a (which may be nil) and converts it to want.
// Errors are reported through report; the returned state tells the caller
// whether to check the value.
func (e *evaluator) typed(a *hclsyntax.Attribute, want cty.Type, report func(Diagnostic)) (cty.Value, evalState) {
	if a == nil {
		return cty.NilVal, stateAbsent
	}
	v, st, diags := e.eval(a.Expr)
	if st == stateInvalid {
		d := diags[0]
		rng := a.Expr.Range()
		if d.Subject != nil {
			rng = *d.Subject
		}
		report(diagAt(SeverityError, rng, fmt.Sprintf("cannot evaluate %s: %s", a.Name, d.Summary), d.Detail))
		return cty.NilVal, stateInvalid
	}
	if st != stateKnown {
		return v, st
	}
	cv, err := convert.Convert(v, want)
	if err != nil {
		report(diagAt(SeverityError, a.Expr.Range(),
			fmt.Sprintf("%s must be a %s", a.Name, want.FriendlyName()),
			fmt.Sprintf("write %s as a %s literal", a.Name, want.FriendlyName())))
		return cty.NilVal, stateInvalid
	}
	return cv, stateKnown
}

// str evaluates a string attribute.
func (e *evaluator) str(a *hclsyntax.Attribute, report func(Diagnostic)) (string, evalState) {
	v, st := e.typed(a, cty.String, report)
	if st != stateKnown {
		return "", st
	}
	return v.AsString(), st
}

// boolean evaluates a bool attribute ("true" strings convert too, as in Nomad).
func (e *evaluator) boolean(a *hclsyntax.Attribute, report func(Diagnostic)) (bool, evalState) {
	v, st := e.typed(a, cty.Bool, report)
	if st != stateKnown {
		return false, st
	}
	return v.True(), st
}

// integer evaluates a whole-number attribute.
func (e *evaluator) integer(a *hclsyntax.Attribute, report func(Diagnostic)) (int64, evalState) {
	v, st := e.typed(a, cty.Number, report)
	if st != stateKnown {
		return 0, st
	}
	bf := v.AsBigFloat()
	n, acc := bf.Int64()
	if acc != big.Exact || !bf.IsInt() {
		report(diagAt(SeverityError, a.Expr.Range(),
			fmt.Sprintf("%s must be a whole number, not %s", a.Name, bf.Text('g', 10)),
			fmt.Sprintf("write %s as an integer", a.Name)))
		return 0, stateInvalid
	}
	return n, st
}

// duration evaluates a Go-style duration string such as "15s" or "1m30s".
func (e *evaluator) duration(a *hclsyntax.Attribute, report func(Diagnostic)) (time.Duration, evalState) {
	s, st := e.str(a, report)
	if st != stateKnown {
		return 0, st
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		report(diagAt(SeverityError, a.Expr.Range(),
			fmt.Sprintf("%s %q is not a valid duration", a.Name, s),
			`write a duration such as "5s" or "1m30s"`))
		return 0, stateInvalid
	}
	return d, st
}

// strList evaluates a list-of-strings attribute.
func (e *evaluator) strList(a *hclsyntax.Attribute, report func(Diagnostic)) ([]string, evalState) {
	v, st := e.typed(a, cty.List(cty.String), report)
	if st != stateKnown {
		return nil, st
	}
	out := make([]string, 0, v.LengthInt())
	for it := v.ElementIterator(); it.Next(); {
		_, el := it.Element()
		if el.IsNull() {
			continue
		}
		out = append(out, el.AsString())
	}
	return out, st
}
