// Package failover holds the end-to-end failover scenarios: a 3-node Bedrock group (real
// Consul server and client agents, real Docker, the plugin driven through plugin/harness)
// loses its master in each way in turn, and every time the invariants are checked from the
// writer app's term-stamped writes and Consul's history.
package failover

import (
	"context"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/e2e/cluster"
)

func TestFailoverScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: needs Docker and Consul")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c := cluster.Start(ctx, t, cluster.Options{})
	for _, f := range cluster.Faults {
		ok := t.Run(string(f), func(t *testing.T) {
			r, err := c.Run(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(r.String())
			for _, s := range r.SplitBrain {
				t.Errorf("two masters: %s", s)
			}
			if r.LostWrites > 0 {
				t.Errorf("%d writes the clones held at the fault are missing on the new master", r.LostWrites)
			}
			if r.NotSetAside > 0 {
				t.Errorf("%d writes of the old master are neither on the new master nor set aside in lost+found", r.NotSetAside)
			}
			if r.New == r.OldMaster {
				t.Errorf("the old master %s was not replaced", r.OldMaster.ID)
			}
		})
		if !ok {
			t.Logf("holder history: %s", c.History().String())
			break
		}
	}
}
