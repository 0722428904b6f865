package jobspecs

import (
	"errors"
	"fmt"
	"slices"
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
