package harness

import (
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"
)

// EncodeHCL produces the exact bytes a Nomad client sends for a config
// block written in HCL. Nomad does not decode the block directly with the
// plugin's schema: the job (or agent config) is first stored as a generic
// map in which every object value and every block becomes a list holding
// maps; the client then re-reads that map as HCL JSON with the schema, and
// sends msgpack of the result. That detour is why a map-valued option must
// be declared list(map(string)); we reproduce it so the harness rejects
// what Nomad rejects. vars are the variables `${...}` may reference (the
// task environment).
func EncodeHCL(spec hcldec.Spec, what, body string, vars map[string]string) ([]byte, error) {
	f, diags := hclsyntax.ParseConfig([]byte(body), what+".hcl", hcl.InitialPos)
	if diags.HasErrors() {
		return nil, fmt.Errorf("%s: %w", what, diags)
	}
	ectx := &hcl.EvalContext{Variables: map[string]cty.Value{}}
	for k, v := range vars {
		ectx.Variables[k] = cty.StringVal(v)
	}
	generic, err := bodyToGeneric(f.Body.(*hclsyntax.Body), ectx) //nolint:forcetypeassert // ParseConfig of native syntax
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	js, err := json.Marshal(generic)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	jf, diags := hcljson.Parse(js, what+".json")
	if diags.HasErrors() {
		return nil, fmt.Errorf("%s: %w", what, diags)
	}
	val, diags := hcldec.Decode(jf.Body, spec, ectx)
	if diags.HasErrors() {
		return nil, fmt.Errorf("%s: %w", what, diags)
	}
	b, err := ctymsgpack.Marshal(val, hcldec.ImpliedType(spec))
	if err != nil {
		return nil, fmt.Errorf("%s: msgpack: %w", what, err)
	}
	return b, nil
}

func bodyToGeneric(body *hclsyntax.Body, ectx *hcl.EvalContext) (map[string]any, error) {
	out := map[string]any{}
	for name, attr := range body.Attributes {
		v, diags := attr.Expr.Value(ectx)
		if diags.HasErrors() {
			return nil, diags
		}
		g, err := ctyToGeneric(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = g
	}
	for _, b := range body.Blocks {
		inner, err := bodyToGeneric(b.Body, ectx)
		if err != nil {
			return nil, err
		}
		// Labelled blocks nest under their labels, as HCL JSON expects.
		var item any = inner
		for i := len(b.Labels) - 1; i >= 0; i-- {
			item = map[string]any{b.Labels[i]: item}
		}
		list, _ := out[b.Type].([]any)
		out[b.Type] = append(list, item)
	}
	return out, nil
}

// ctyToGeneric turns a value into plain Go, wrapping every object or map in
// a one-element list, as Nomad's generic config maps do.
func ctyToGeneric(v cty.Value) (any, error) {
	if v.IsNull() {
		return nil, nil
	}
	if !v.IsKnown() {
		return nil, fmt.Errorf("value is not known")
	}
	t := v.Type()
	switch {
	case t == cty.String:
		return v.AsString(), nil
	case t == cty.Bool:
		return v.True(), nil
	case t == cty.Number:
		bf := v.AsBigFloat()
		if bf.IsInt() {
			i, _ := bf.Int(new(big.Int))
			return json.Number(i.String()), nil
		}
		return json.Number(bf.Text('g', -1)), nil
	case t.IsListType() || t.IsTupleType() || t.IsSetType():
		var out []any
		for it := v.ElementIterator(); it.Next(); {
			_, ev := it.Element()
			g, err := ctyToGeneric(ev)
			if err != nil {
				return nil, err
			}
			out = append(out, g)
		}
		if out == nil {
			out = []any{}
		}
		return out, nil
	case t.IsMapType() || t.IsObjectType():
		m := map[string]any{}
		for it := v.ElementIterator(); it.Next(); {
			k, ev := it.Element()
			g, err := ctyToGeneric(ev)
			if err != nil {
				return nil, err
			}
			m[k.AsString()] = g
		}
		return []any{m}, nil
	default:
		return nil, fmt.Errorf("unsupported value type %s", t.FriendlyName())
	}
}
