package plugin

import (
	"io"
	"os"

	"github.com/hashicorp/go-hclog"
)

// NewLogger returns the plugin's logger: hclog JSON on stderr, which the
// Nomad client parses line by line and folds into its own log. Nothing may
// reach stdout before the handshake line, so no logger ever writes there.
func NewLogger(name string, level string) hclog.Logger {
	return newLogger(os.Stderr, name, level)
}

func newLogger(w io.Writer, name, level string) hclog.Logger {
	lvl := hclog.LevelFromString(level)
	if lvl == hclog.NoLevel {
		lvl = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      lvl,
		Output:     w,
		JSONFormat: true,
	})
}
