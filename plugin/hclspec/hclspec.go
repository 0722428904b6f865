// Package hclspec builds the schema messages a Nomad plugin returns for its
// configuration blocks, and turns them back into hcldec specs the way the
// Nomad client does, so tests and the harness decode HCL exactly as Nomad
// would before anything reaches the plugin.
package hclspec

import (
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/hclspecpb"
)

// Spec is the wire schema node.
type Spec = hclspecpb.Spec

// Object is the usual root: named children become attributes of an object.
func Object(attrs map[string]*Spec) *Spec {
	return &Spec{Block: &hclspecpb.Spec_Object{Object: &hclspecpb.Object{Attributes: attrs}}}
}

// Attr reads an optional attribute of the given HCL type expression.
func Attr(name, typ string) *Spec {
	return &Spec{Block: &hclspecpb.Spec_Attr{Attr: &hclspecpb.Attr{Name: name, Type: typ}}}
}

// RequiredAttr reads an attribute the user must set.
func RequiredAttr(name, typ string) *Spec {
	return &Spec{Block: &hclspecpb.Spec_Attr{Attr: &hclspecpb.Attr{Name: name, Type: typ, Required: true}}}
}

// Default yields primary, or def when primary is null.
func Default(primary, def *Spec) *Spec {
	return &Spec{Block: &hclspecpb.Spec_Default{Default: &hclspecpb.Default{Primary: primary, Default: def}}}
}

// Literal is a constant HCL expression such as `"5s"`, `true` or `[]`.
func Literal(expr string) *Spec {
	return &Spec{Block: &hclspecpb.Spec_Literal{Literal: &hclspecpb.Literal{Value: expr}}}
}

// Block reads at most one nested block.
func Block(name string, required bool, nested *Spec) *Spec {
	return &Spec{Block: &hclspecpb.Spec_BlockValue{BlockValue: &hclspecpb.Block{Name: name, Required: required, Nested: nested}}}
}

// BlockList reads repeated blocks into a list.
func BlockList(name string, nested *Spec) *Spec {
	return &Spec{Block: &hclspecpb.Spec_BlockList{BlockList: &hclspecpb.BlockList{Name: name, Nested: nested}}}
}

// BlockAttrs reads a block's attributes as a map of the given element type.
func BlockAttrs(name, elemType string, required bool) *Spec {
	return &Spec{Block: &hclspecpb.Spec_BlockAttrs{BlockAttrs: &hclspecpb.BlockAttrs{Name: name, Type: elemType, Required: required}}}
}
