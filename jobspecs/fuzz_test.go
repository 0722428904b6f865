package jobspecs

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzValidate feeds arbitrary bytes to the validator: it must never panic,
// and an unparsable input must yield exactly one diagnostic.
func FuzzValidate(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.nomad.hcl"))
	shipped, _ := filepath.Glob("*.nomad.hcl")
	for _, p := range append(seeds, shipped...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		diags, err := Validate("fuzz.nomad.hcl", src, ValidateOptions{Vars: map[string]string{"instances": "x"}})
		if err != nil && len(diags) != 1 {
			t.Fatalf("unparsable input gave %d diagnostics", len(diags))
		}
		for _, d := range diags {
			if d.Message == "" || d.Hint == "" || (d.Severity != SeverityError && d.Severity != SeverityWarning) {
				t.Fatalf("incomplete diagnostic %+v", d)
			}
		}
	})
}
