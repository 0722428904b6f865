package hclspec

import (
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

func decode(t *testing.T, s *Spec, body string) (cty.Value, hcl.Diagnostics) {
	t.Helper()
	spec, err := ToHCLDec(s)
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclsyntax.ParseConfig([]byte(body), "t.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return hcldec.Decode(f.Body, spec, nil)
}

func TestSchemaRoundTrip(t *testing.T) {
	s := Object(map[string]*Spec{
		"image":   RequiredAttr("image", "string"),
		"labels":  Attr("labels", "list(map(string))"),
		"timeout": Default(Attr("timeout", "string"), Literal(`"5m"`)),
		"syncer":  Block("syncer", false, Object(map[string]*Spec{"port": RequiredAttr("port", "string")})),
		"ulimit":  BlockList("ulimit", Object(map[string]*Spec{"soft": Attr("soft", "number")})),
		"opts":    BlockAttrs("opts", "string", false),
	})
	v, diags := decode(t, s, `
image  = "app:1"
labels = [{ team = "bedrock" }]
syncer { port = "sync" }
ulimit { soft = 5 }
opts { a = "b" }
`)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if v.GetAttr("image").AsString() != "app:1" || v.GetAttr("timeout").AsString() != "5m" {
		t.Fatalf("value %#v", v)
	}
	if v.GetAttr("labels").LengthInt() != 1 || v.GetAttr("syncer").GetAttr("port").AsString() != "sync" {
		t.Fatalf("value %#v", v)
	}

	_, diags = decode(t, s, `imgae = "x"`)
	if !diags.HasErrors() || !strings.Contains(allDiags(diags), "imgae") {
		t.Fatalf("unknown attribute must be refused naming it: %v", diags)
	}
	_, diags = decode(t, s, `labels = { team = "x" }`)
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "image") {
		t.Fatalf("missing required attribute must be named: %v", diags)
	}
}

func TestSchemaErrors(t *testing.T) {
	for _, s := range []*Spec{
		{},
		Attr("x", "list("),
		Object(map[string]*Spec{"a": Literal("nope(")}),
		Object(map[string]*Spec{"a": Attr("", "string")}),
	} {
		if _, err := ToHCLDec(s); err == nil && s.GetBlock() != nil {
			if a := s.GetObject().GetAttributes()["a"]; a != nil && a.GetAttr() != nil {
				continue // an empty name inside an Object takes the key
			}
			t.Errorf("%v converted but should not", s)
		} else if s.GetBlock() == nil && err == nil {
			t.Error("an empty spec must not convert")
		}
	}
}

func allDiags(diags hcl.Diagnostics) string {
	var b strings.Builder
	for _, d := range diags {
		b.WriteString(d.Summary + ": " + d.Detail + "\n")
	}
	return b.String()
}
