package driver

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// Fingerprint cadence: a healthy engine is re-checked every 15 s; an
// unhealthy one every 3 s so the node comes back quickly. A value is sent
// whenever health or attributes change, and at least every resendEvery
// so the client always has a fresh one.
const (
	fingerprintHealthy   = 15 * time.Second
	fingerprintUnhealthy = 3 * time.Second
	fingerprintTimeout   = 5 * time.Second
	resendEvery          = 60 * time.Second
)

// Fingerprint streams the engine's health and node attributes until ctx
// ends. The first value is computed immediately.
func (d *Driver) Fingerprint(ctx context.Context) (<-chan *plugin.Fingerprint, error) {
	ch := make(chan *plugin.Fingerprint, 1)
	go func() {
		defer close(ch)
		var last *plugin.Fingerprint
		var lastSent time.Time
		for {
			fp := d.fingerprint(ctx)
			if ctx.Err() != nil {
				return
			}
			if last == nil || !sameFingerprint(last, fp) || time.Since(lastSent) >= resendEvery {
				select {
				case ch <- fp:
				case <-ctx.Done():
					return
				}
				last, lastSent = fp, time.Now()
			}
			wait := fingerprintHealthy
			if fp.Health != plugin.HealthHealthy {
				wait = fingerprintUnhealthy
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
	return ch, nil
}

// fingerprint checks the engine once. The unhealthy description is stable
// (it names the endpoint, not the changing low-level error, which goes to
// the log) so the client does not see a "change" on every check.
func (d *Driver) fingerprint(ctx context.Context) *plugin.Fingerprint {
	s := d.settings()
	attrs := map[string]plugin.Attribute{
		"driver.bedrock":         plugin.BoolAttr(true),
		"driver.bedrock.version": plugin.StringAttr(Version),
		// Whether syncer.mode "async" and "sync" can run here (a job
		// may constrain on it).
		"driver.bedrock.fuse": plugin.BoolAttr(fuseAvailable()),
	}
	unhealthy := func(desc string, err error) *plugin.Fingerprint {
		d.logger.Debug("docker engine check failed", "endpoint", s.endpoint, "error", err)
		return &plugin.Fingerprint{Attributes: attrs, Health: plugin.HealthUnhealthy, Description: desc}
	}
	cli, err := d.client()
	if err != nil {
		return unhealthy(fmt.Sprintf("Docker client for %s could not be created: check docker_endpoint", s.endpoint), err)
	}
	cctx, cancel := context.WithTimeout(ctx, fingerprintTimeout)
	defer cancel()
	if _, err := cli.Ping(cctx); err != nil {
		return unhealthy(fmt.Sprintf("Docker engine not reachable at %s: is dockerd running?", s.endpoint), err)
	}
	v, err := cli.ServerVersion(cctx)
	if err != nil {
		return unhealthy(fmt.Sprintf("Docker engine at %s did not report its version: is it a Docker Engine API?", s.endpoint), err)
	}
	attrs["driver.bedrock.docker.version"] = plugin.StringAttr(v.Version)
	attrs["driver.bedrock.docker.api_version"] = plugin.StringAttr(v.APIVersion)
	if info, err := cli.Info(cctx); err == nil {
		var runtimes []string
		for name := range info.Runtimes {
			runtimes = append(runtimes, name)
		}
		sort.Strings(runtimes)
		attrs["driver.bedrock.docker.runtimes"] = plugin.StringAttr(strings.Join(runtimes, ","))
		if info.CgroupVersion != "" {
			attrs["driver.bedrock.docker.cgroup_version"] = plugin.StringAttr(info.CgroupVersion)
		}
		attrs["driver.bedrock.privileged.enabled"] = plugin.BoolAttr(s.allowPrivileged)
		attrs["driver.bedrock.volumes.enabled"] = plugin.BoolAttr(s.volumesEnabled)
	}
	return &plugin.Fingerprint{Attributes: attrs, Health: plugin.HealthHealthy, Description: "Healthy"}
}

func sameFingerprint(a, b *plugin.Fingerprint) bool {
	if a.Health != b.Health || a.Description != b.Description || len(a.Attributes) != len(b.Attributes) {
		return false
	}
	for k, v := range a.Attributes {
		if b.Attributes[k] != v {
			return false
		}
	}
	return true
}
