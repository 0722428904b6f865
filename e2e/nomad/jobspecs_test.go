package nomad_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/nomad"
	"github.com/bedrock-nomad/nomad-driver-bedrock/jobspecs"
)

// TestShippedJobspecsOnNomad hands every jobspec we ship, and what `init` prints, to a real
// Nomad server as `nomad job run` would (parse, then validate): a jobspec Nomad refuses is a
// broken quickstart, whatever our own validator says.
func TestShippedJobspecsOnNomad(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a Nomad agent")
	}
	plugin := os.Getenv("BEDROCK_PLUGIN_BIN")
	if plugin == "" {
		plugin = filepath.Join(t.TempDir(), "none")
		if err := os.WriteFile(plugin, nil, 0o755); err != nil { //nolint:gosec // a stand-in, never run
			t.Fatal(err)
		}
	}
	c := nomad.Start(t, nomad.Options{Plugin: plugin})
	specs := map[string][]byte{}
	err := fs.WalkDir(jobspecs.Shipped(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(jobspecs.Shipped(), p)
		specs[p] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	starter, err := jobspecs.Starter(jobspecs.StarterOptions{Image: "ghcr.io/example/app:1.0", Port: 8080, Data: "/data"})
	if err != nil {
		t.Fatal(err)
	}
	specs["init output"] = starter
	if len(specs) < 4 {
		t.Fatalf("only %d jobspecs found", len(specs))
	}
	for name, src := range specs {
		job, err := c.API().Jobs().ParseHCLOpts(&nomadapi.JobsParseRequest{JobHCL: string(src), Canonicalize: true})
		if err != nil {
			t.Errorf("%s: Nomad cannot parse it: %v", name, err)
			continue
		}
		resp, _, err := c.API().Jobs().Validate(job, nil)
		if err != nil {
			t.Errorf("%s: validate: %v", name, err)
			continue
		}
		if resp.Error != "" || len(resp.ValidationErrors) > 0 {
			t.Errorf("%s: Nomad refuses it: %q %q", name, resp.Error, resp.ValidationErrors)
		}
		for _, w := range []string{resp.Warnings} {
			if w != "" {
				t.Logf("%s: Nomad warns: %s", name, w)
			}
		}
	}
}
