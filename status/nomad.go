package status

import (
	"context"
	"fmt"
	"os"

	nomadapi "github.com/hashicorp/nomad/api"
)

// nomadAllocs lists the job's allocations when a Nomad address is set
// (-nomad or NOMAD_ADDR; token from NOMAD_TOKEN, TLS from the usual NOMAD_*
// variables). It returns nil without an address; on failure nil and a
// warning, since the verdict rests on Consul alone.
func (c *collector) nomadAllocs(ctx context.Context) (map[string]alloc, string, string) {
	if c.opts.NomadAddr == "" && os.Getenv("NOMAD_ADDR") == "" {
		return nil, "", ""
	}
	cfg := nomadapi.DefaultConfig()
	if c.opts.NomadAddr != "" {
		cfg.Address = c.opts.NomadAddr
	}
	client, err := nomadapi.NewClient(cfg)
	if err != nil {
		return nil, cfg.Address, fmt.Sprintf("nomad at %s not asked: %v", cfg.Address, err)
	}
	defer client.Close() // its idle connections, as for Consul's
	cctx, cancel := c.call(ctx)
	defer cancel()
	stubs, _, err := client.Jobs().Allocations(c.opts.Job, false, (&nomadapi.QueryOptions{Namespace: c.opts.Namespace}).WithContext(cctx))
	if err != nil {
		return nil, cfg.Address, fmt.Sprintf("nomad at %s: listing the allocations of job %q in namespace %q failed (%v): check -nomad or NOMAD_ADDR and NOMAD_TOKEN; showing Consul's view only",
			cfg.Address, c.opts.Job, c.opts.Namespace, err)
	}
	out := make(map[string]alloc, len(stubs))
	for _, s := range stubs {
		out[s.ID] = alloc{ID: s.ID, Node: s.NodeName, Group: s.TaskGroup, Status: s.ClientStatus}
	}
	return out, cfg.Address, ""
}
