package jobspecs

import (
	"fmt"
	"os"

	"github.com/hashicorp/nomad/api"
)

// NewAPIClient builds the Nomad API client of the runtime policy. addr and
// token come from the plugin config and win; otherwise NOMAD_ADDR and
// NOMAD_TOKEN of the agent's environment apply (TLS settings come from the
// usual NOMAD_CACERT, NOMAD_CLIENT_CERT, ... variables). It returns (nil, nil)
// when no address is configured anywhere: the policy is then off rather than
// guessing a local agent address.
func NewAPIClient(addr, token string) (*api.Client, error) {
	if addr == "" && os.Getenv("NOMAD_ADDR") == "" {
		return nil, nil
	}
	cfg := api.DefaultConfig()
	if addr != "" {
		cfg.Address = addr
	}
	if token != "" {
		cfg.SecretID = token
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("nomad API client for %s: %w", cfg.Address, err)
	}
	return c, nil
}
