package jobspecs

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Severity tells whether a diagnostic blocks a jobspec (error) or only points
// at a setting that slows or endangers failover (warning).
type Severity string

// The two severities a diagnostic can carry.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Diagnostic is one finding of the validator, positioned like a compiler
// message so that editors and CI annotate the right line. Line and Col are
// 1-based; both are 0 when the finding concerns the whole file (for example
// when it cannot be read).
type Diagnostic struct {
	File     string   `json:"file"`
	Line     int      `json:"line"`
	Col      int      `json:"col"`
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Hint     string   `json:"hint"`
}

// String formats d as "file:line:col: severity: message; hint: hint", the
// stable text form printed by the validate command.
func (d Diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.File)
	if d.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", d.Line, d.Col)
	}
	fmt.Fprintf(&b, ": %s: %s", d.Severity, d.Message)
	if d.Hint != "" {
		fmt.Fprintf(&b, "; hint: %s", d.Hint)
	}
	return b.String()
}

// Diagnostics is a list of findings, usually for one or more files.
type Diagnostics []Diagnostic

// HasErrors reports whether any diagnostic is an error.
func (ds Diagnostics) HasErrors() bool {
	return slices.ContainsFunc(ds, func(d Diagnostic) bool { return d.Severity == SeverityError })
}

// sortByPosition orders diagnostics by file, line and column, keeping the
// order in which rules found them for equal positions, so output is stable.
func (ds Diagnostics) sortByPosition() {
	slices.SortStableFunc(ds, func(a, b Diagnostic) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
}

// writeText prints one diagnostic per line.
func (ds Diagnostics) writeText(w io.Writer) error {
	for _, d := range ds {
		if _, err := fmt.Fprintln(w, d.String()); err != nil {
			return fmt.Errorf("write diagnostics: %w", err)
		}
	}
	return nil
}

// writeJSON prints the diagnostics as one JSON array ("[]" when clean), the
// machine-readable form for CI.
func (ds Diagnostics) writeJSON(w io.Writer) error {
	out := ds
	if out == nil {
		out = Diagnostics{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("write diagnostics as JSON: %w", err)
	}
	return nil
}

// diagAt builds a diagnostic positioned at the start of rng.
func diagAt(sev Severity, rng hcl.Range, msg, hint string) Diagnostic {
	return Diagnostic{
		File:     rng.Filename,
		Line:     rng.Start.Line,
		Col:      rng.Start.Column,
		Severity: sev,
		Message:  msg,
		Hint:     hint,
	}
}
