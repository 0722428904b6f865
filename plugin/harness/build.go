package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// ModuleRoot finds the repository root (the directory holding go.mod) from
// the working directory upwards.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildPlugin compiles the plugin binary from the repository once per test
// process and returns its path. BEDROCK_PLUGIN_BIN overrides it with a
// prebuilt binary (CI builds once with `make build`).
func BuildPlugin() (string, error) {
	buildOnce.Do(func() {
		if p := os.Getenv("BEDROCK_PLUGIN_BIN"); p != "" {
			buildPath = p
			return
		}
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "bedrock-plugin-")
		if err != nil {
			buildErr = fmt.Errorf("temp dir: %w", err)
			return
		}
		buildPath = filepath.Join(dir, "nomad-driver-bedrock")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", buildPath, ".")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	return buildPath, buildErr
}
