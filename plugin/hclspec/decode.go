package hclspec

import (
	"errors"
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/hclspecpb"
)

// ErrEmptySpec is returned for a schema node with no variant set.
var ErrEmptySpec = errors.New("empty spec node")

// literalFuncs are the functions a Literal may call, the same small set the
// Nomad client offers.
var literalFuncs = map[string]function.Function{
	"abs": stdlib.AbsoluteFunc, "coalesce": stdlib.CoalesceFunc, "concat": stdlib.ConcatFunc,
	"hasindex": stdlib.HasIndexFunc, "int": stdlib.IntFunc, "jsondecode": stdlib.JSONDecodeFunc,
	"jsonencode": stdlib.JSONEncodeFunc, "length": stdlib.LengthFunc, "lower": stdlib.LowerFunc,
	"max": stdlib.MaxFunc, "min": stdlib.MinFunc, "reverse": stdlib.ReverseFunc,
	"strlen": stdlib.StrlenFunc, "substr": stdlib.SubstrFunc, "upper": stdlib.UpperFunc,
}

// ToHCLDec converts a wire schema into an hcldec spec, failing with the
// path of the first node that does not convert.
func ToHCLDec(s *Spec) (hcldec.Spec, error) {
	return convert(s, "", "root")
}

func convert(s *Spec, defaultName, path string) (hcldec.Spec, error) {
	if s == nil || s.GetBlock() == nil {
		return nil, fmt.Errorf("%s: %w", path, ErrEmptySpec)
	}
	name := func(n string) string {
		if n == "" {
			return defaultName
		}
		return n
	}
	switch b := s.GetBlock().(type) {
	case *hclspecpb.Spec_Object:
		obj := hcldec.ObjectSpec{}
		for k, child := range b.Object.GetAttributes() {
			c, err := convert(child, k, path+"."+k)
			if err != nil {
				return nil, err
			}
			obj[k] = c
		}
		return obj, nil
	case *hclspecpb.Spec_Array:
		var tuple hcldec.TupleSpec
		for i, child := range b.Array.GetValues() {
			c, err := convert(child, "", fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			tuple = append(tuple, c)
		}
		return tuple, nil
	case *hclspecpb.Spec_Attr:
		n := name(b.Attr.GetName())
		if n == "" {
			return nil, fmt.Errorf("%s: attribute without a name", path)
		}
		t, err := parseType(b.Attr.GetType())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &hcldec.AttrSpec{Name: n, Type: t, Required: b.Attr.GetRequired()}, nil
	case *hclspecpb.Spec_BlockValue:
		nested, err := convert(b.BlockValue.GetNested(), "", path+"."+name(b.BlockValue.GetName()))
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockSpec{TypeName: name(b.BlockValue.GetName()), Nested: nested, Required: b.BlockValue.GetRequired()}, nil
	case *hclspecpb.Spec_BlockAttrs:
		t, err := parseType(b.BlockAttrs.GetType())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &hcldec.BlockAttrsSpec{TypeName: name(b.BlockAttrs.GetName()), ElementType: t, Required: b.BlockAttrs.GetRequired()}, nil
	case *hclspecpb.Spec_BlockList:
		nested, err := convert(b.BlockList.GetNested(), "", path+"."+name(b.BlockList.GetName()))
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockListSpec{TypeName: name(b.BlockList.GetName()), Nested: nested,
			MinItems: int(b.BlockList.GetMinItems()), MaxItems: int(b.BlockList.GetMaxItems())}, nil //nolint:gosec // small counts
	case *hclspecpb.Spec_BlockSet:
		nested, err := convert(b.BlockSet.GetNested(), "", path+"."+name(b.BlockSet.GetName()))
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockSetSpec{TypeName: name(b.BlockSet.GetName()), Nested: nested,
			MinItems: int(b.BlockSet.GetMinItems()), MaxItems: int(b.BlockSet.GetMaxItems())}, nil //nolint:gosec // small counts
	case *hclspecpb.Spec_BlockMap:
		nested, err := convert(b.BlockMap.GetNested(), "", path+"."+name(b.BlockMap.GetName()))
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockMapSpec{TypeName: name(b.BlockMap.GetName()), LabelNames: b.BlockMap.GetLabels(), Nested: nested}, nil
	case *hclspecpb.Spec_Default:
		p, err := convert(b.Default.GetPrimary(), defaultName, path)
		if err != nil {
			return nil, err
		}
		d, err := convert(b.Default.GetDefault(), defaultName, path+"(default)")
		if err != nil {
			return nil, err
		}
		return &hcldec.DefaultSpec{Primary: p, Default: d}, nil
	case *hclspecpb.Spec_Literal:
		v, err := evalLiteral(b.Literal.GetValue())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &hcldec.LiteralSpec{Value: v}, nil
	default:
		return nil, fmt.Errorf("%s: %w", path, ErrEmptySpec)
	}
}

func parseType(s string) (cty.Type, error) {
	if s == "" {
		return cty.DynamicPseudoType, nil
	}
	expr, diags := hclsyntax.ParseExpression([]byte(s), "type", hcl.InitialPos)
	if diags.HasErrors() {
		return cty.NilType, fmt.Errorf("type %q: %w", s, diags)
	}
	t, diags := typeexpr.TypeConstraint(expr)
	if diags.HasErrors() {
		return cty.NilType, fmt.Errorf("type %q: %w", s, diags)
	}
	return t, nil
}

func evalLiteral(s string) (cty.Value, error) {
	expr, diags := hclsyntax.ParseExpression([]byte(s), "literal", hcl.InitialPos)
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("literal %q: %w", s, diags)
	}
	v, diags := expr.Value(&hcl.EvalContext{Functions: literalFuncs})
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("literal %q: %w", s, diags)
	}
	return v, nil
}
