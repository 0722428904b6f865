package jobspecs

import (
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/hcl/v2"
)

// ErrUnreadable marks a jobspec that could not be read or parsed at all, as
// opposed to one that parsed and broke the policy. The validate command exits
// with status 2 for it.
var ErrUnreadable = errors.New("unreadable jobspec")

// ValidateOptions tunes [Validate].
type ValidateOptions struct {
	// Vars sets input variables like `nomad job run -var name=value`; they
	// take precedence over the defaults of the file's variable blocks.
	Vars map[string]string
}

// Validate checks one jobspec against Bedrock's placement policy and returns
// its diagnostics, ordered by position. filename is only used to position
// messages. When src does not parse, the result is exactly one diagnostic
// (the first syntax error) and an error wrapping [ErrUnreadable]: nothing is
// checked in a file whose structure is uncertain, so nothing is reported as
// if it were valid.
func Validate(filename string, src []byte, opts ValidateOptions) (Diagnostics, error) {
	if d := checkNesting(filename, src); d != nil {
		return Diagnostics{*d}, fmt.Errorf("%s: %w", filename, ErrUnreadable)
	}
	body, syntaxErr := parseFile(filename, src)
	if syntaxErr != nil {
		return Diagnostics{*syntaxErr}, fmt.Errorf("%s: %w", filename, ErrUnreadable)
	}
	c := &checker{ev: newEvaluator(body, opts.Vars)}
	c.checkFile(body, filename)
	c.diags.sortByPosition()
	// A job-level setting is evaluated once per group; report it once.
	return slices.Compact(c.diags), nil
}

// MaxNesting bounds how deeply brackets may nest in a jobspec. The HCL
// parser and our evaluator recurse once per level, so a file of a hundred
// thousand nested brackets would exhaust the stack and crash the process
// (a Go stack overflow cannot be recovered); real jobspecs nest a dozen
// levels at most.
const MaxNesting = 256

// checkNesting refuses src when its brackets ({, [, ( and the ${ and %{
// of templates) nest deeper than MaxNesting. It counts brackets in strings
// too (templates nest there), skips comments, and says where the limit was
// passed.
func checkNesting(filename string, src []byte) *Diagnostic {
	depth, line, col := 0, 1, 1
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '\n':
			line, col = line+1, 0
		case c == '#' || (c == '/' && i+1 < len(src) && src[i+1] == '/'):
			for i < len(src) && src[i] != '\n' {
				i++
			}
			line, col = line+1, 0
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			for i += 2; i < len(src) && (src[i-1] != '*' || src[i] != '/'); i++ {
				if src[i] == '\n' {
					line, col = line+1, 0
				}
			}
		case c == '{' || c == '[' || c == '(':
			depth++
		case c == '}' || c == ']' || c == ')':
			depth = max(depth-1, 0)
		}
		col++
		if depth > MaxNesting {
			rng := hcl.Range{Filename: filename, Start: hcl.Pos{Line: line, Column: col, Byte: i}}
			rng.End = rng.Start
			d := diagAt(SeverityError, rng, fmt.Sprintf("brackets nest deeper than %d levels", MaxNesting),
				"flatten the expression; a jobspec never needs this depth")
			return &d
		}
	}
	return nil
}
