package failover

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/cluster"
	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/netns"
	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/nomad"
)

// TestFailoverUnderNomad runs the failover scenarios under a real Nomad agent: a server and four
// clients (one spare for replacements), each client with its own Consul agent, the plugin
// launched by Nomad from its plugin_dir, the job submitted through Nomad's API with Nomad's
// default restart block. Nomad's restarts, reschedules, contexts, hook order and GC are part of
// what is tested.
func TestFailoverUnderNomad(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Docker, Consul and Nomad")
	}
	nomad.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute+*soak)
	defer cancel()
	opts, faults := cluster.Options{Nomad: true, Netns: true}, cluster.Faults
	if err := netns.Available(); err != nil {
		t.Logf("the partition scenario needs network namespaces: %v; running the others", err)
		opts.Netns, faults = false, slices.DeleteFunc(slices.Clone(faults), func(f cluster.Fault) bool { return f == cluster.Partition })
	}
	if only := os.Getenv("BEDROCK_E2E_FAULTS"); only != "" {
		faults = nil
		for _, f := range strings.Split(only, ",") {
			faults = append(faults, cluster.Fault(f))
		}
	}
	c := cluster.Start(ctx, t, opts)
	t.Run("plugin-crash", func(t *testing.T) { pluginCrashKeepsTheLock(ctx, t, c) })
	t.Run("agent-restart", func(t *testing.T) {
		keepsTheLock(ctx, t, c, "client agent restart", (*cluster.Node).RestartAgent)
	})
	end := time.Now().Add(*soak)
	for round := 1; round == 1 || time.Now().Before(end); round++ {
		if !runRound(ctx, t, c, faults, round) {
			return
		}
	}
}
