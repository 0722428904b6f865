package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// StartAgent launches the plugin binary bin as a Nomad client would (harness.StartAgent), with
// the plugin config pluginHCL, within d. When the test ends it checks that the plugin kept
// stderr to hclog lines (nothing else may reach Nomad's log) and stops it.
func StartAgent(t testing.TB, bin, pluginHCL string, d time.Duration) *harness.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	c, err := harness.StartAgent(ctx, harness.Options{Binary: bin}, pluginHCL)
	if err != nil {
		t.Fatalf("agent start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Plugin.CheckLogs(); err != nil {
			t.Errorf("stderr discipline: %v", err)
		}
		c.Stop(context.Background())
	})
	return c
}
