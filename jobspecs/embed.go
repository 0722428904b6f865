package jobspecs

import (
	"embed"
	"io/fs"
)

// shipped holds the ready-to-run jobspecs of this directory, so the binary
// can print them (demo, docs) without a checkout.
//
//go:embed *.nomad.hcl
var shipped embed.FS

// Shipped returns the shipped jobspecs (demo.nomad.hcl, minecraft.nomad.hcl,
// gitea.nomad.hcl, ...) as a read-only file system rooted at this directory.
func Shipped() fs.FS { return shipped }

// Demo returns the jobspec of the demo app (image bedrock-demo:latest).
func Demo() []byte {
	b, err := shipped.ReadFile("demo.nomad.hcl")
	if err != nil {
		// The file is embedded at build time; a missing file cannot build.
		return nil
	}
	return b
}
