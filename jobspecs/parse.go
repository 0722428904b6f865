package jobspecs

import (
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// The validator reads jobspecs generically: Nomad's full schema is not
// available to us, so instead of decoding into Nomad's types it walks the
// syntax tree and picks out the few blocks and attributes the placement
// policy is about. Anything else in the file is ignored, which keeps the
// validator working as Nomad adds settings.

// parseFile parses src as native HCL syntax. A file that does not parse
// yields exactly one diagnostic, the first syntax error, because what HCL
// reports after the first error is mostly its consequence.
func parseFile(filename string, src []byte) (*hclsyntax.Body, *Diagnostic) {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		rng := hcl.Range{Filename: filename, Start: hcl.InitialPos}
		if d.Subject != nil {
			rng = *d.Subject
		}
		out := diagAt(SeverityError, rng, "syntax error: "+d.Summary, d.Detail)
		if out.Hint == "" {
			out.Hint = "fix the HCL syntax at this position"
		}
		return nil, &out
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		// hclsyntax.ParseConfig always returns a *hclsyntax.Body; guard anyway.
		out := diagAt(SeverityError, hcl.Range{Filename: filename, Start: hcl.InitialPos},
			"internal error: unexpected HCL body type", "report this as a bug")
		return nil, &out
	}
	return body, nil
}

// blocksOf returns the nested blocks of body with the given type, in file order.
func blocksOf(body *hclsyntax.Body, typ string) []*hclsyntax.Block {
	if body == nil {
		return nil
	}
	var out []*hclsyntax.Block
	for _, b := range body.Blocks {
		if b.Type == typ {
			out = append(out, b)
		}
	}
	return out
}

// blockOf returns the first nested block of body with the given type, or nil.
func blockOf(body *hclsyntax.Body, typ string) *hclsyntax.Block {
	if bs := blocksOf(body, typ); len(bs) > 0 {
		return bs[0]
	}
	return nil
}

// attrOf returns the attribute called name in block b's body, or nil. b may be nil.
func attrOf(b *hclsyntax.Block, name string) *hclsyntax.Attribute {
	if b == nil || b.Body == nil {
		return nil
	}
	return b.Body.Attributes[name]
}

// blockName returns the block's single label, or "" when it has none.
func blockName(b *hclsyntax.Block) string {
	if len(b.Labels) == 0 {
		return ""
	}
	return b.Labels[0]
}

// taskKind classifies a task for the placement policy.
type taskKind int

const (
	kindOther   taskKind = iota // not a bedrock task
	kindApp                     // bedrock task with an image: the replicated app
	kindSyncer                  // bedrock task with a syncer block
	kindBoth                    // both image and syncer: refused
	kindNeither                 // bedrock task with neither: refused
	kindUnknown                 // driver cannot be evaluated
)

// task is a task block with the parts the rules look at.
type task struct {
	block  *hclsyntax.Block
	name   string
	kind   taskKind
	config *hclsyntax.Block // may be nil
}

// group is a group block with its tasks and declared network port labels.
type group struct {
	block *hclsyntax.Block
	name  string
	tasks []*task
	ports map[string]bool
}

// describe names a task in messages.
