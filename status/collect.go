package status

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// Options say what to look at and where.
type Options struct {
	// Job is the Nomad job id (required).
	Job string
	// Group limits the report to one task group; empty means every group
	// that has election keys under the job's prefix.
	Group string
	// Namespace is the Nomad namespace (default "default").
	Namespace string
	// ConsulAddr is the Consul agent's HTTP address; empty means
	// CONSUL_HTTP_ADDR, else 127.0.0.1:8500. The token comes from
	// CONSUL_HTTP_TOKEN (and the TLS settings from the usual CONSUL_*
	// variables), as with the consul CLI.
	ConsulAddr string
	// NomadAddr is the Nomad API address; empty means NOMAD_ADDR, and
	// without either Nomad is not asked. The token comes from NOMAD_TOKEN.
	NomadAddr string
	// Service is the Consul service name of the app; empty means
	// <job>-<group> (the syncer's default), and when no instance is found
	// under it, any service tagged master or clone whose instance ids end
	// with an instance's id.
	Service string
	// Timeout bounds each request to Consul or Nomad (default 10s).
	Timeout time.Duration
}

// DefaultTimeout bounds each request when Options.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// ErrNotFound means Consul holds no election keys for the job or group:
// a typo in -job/-group/-namespace, or a job whose syncers never started.
var ErrNotFound = errors.New("no Bedrock election keys found")

// Collect reads the state of the job's groups. An error means no verdict
// could be reached (Consul unreachable or refusing, nothing found); its
// message says what to do. Problems with Nomad or with service health only
// add warnings: the verdict rests on the election keys.
func Collect(ctx context.Context, o Options) (*Report, error) {
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	cc := consulapi.DefaultConfig()
	if o.ConsulAddr != "" {
		cc.Address = o.ConsulAddr
	}
	client, err := consulapi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cc.Address, err)
	}
	// Each Collect has a transport of its own: leave no connection open
	// behind it. A caller that polls (a dashboard, a test) would otherwise
	// pile up idle ones until Consul refuses the address (429 past
	// http_max_conns_per_client).
	if cc.Transport != nil {
		defer cc.Transport.CloseIdleConnections()
	}
	c := &collector{opts: o, consul: client, consulAddr: cc.Address}
	r := &Report{Job: o.Job, Namespace: o.Namespace, Consul: cc.Address}

	groups := []string{o.Group}
	if o.Group == "" {
		if groups, err = c.groups(ctx); err != nil {
			return nil, err
		}
	}
	allocs, nomadAddr, warn := c.nomadAllocs(ctx)
	r.Nomad = nomadAddr
	if warn != "" {
		r.Warnings = append(r.Warnings, warn)
	}
	for _, name := range groups {
		g, err := c.group(ctx, name, allocs)
		if err != nil {
			return nil, err
		}
		r.Groups = append(r.Groups, g)
	}
	r.finish()
	return r, nil
}

type collector struct {
	opts       Options
	consul     *consulapi.Client
	consulAddr string
}

func (c *collector) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opts.Timeout)
}

func (c *collector) groups(ctx context.Context) ([]string, error) {
	cctx, cancel := c.call(ctx)
	defer cancel()
	groups, err := lease.Groups(cctx, c.consul, "", c.opts.Namespace, c.opts.Job)
	if err != nil {
		return nil, c.consulErr(err)
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("%w for job %q in namespace %q (nothing under %s/ in Consul at %s): check -job and -namespace, and that the job's syncer tasks have started",
			ErrNotFound, c.opts.Job, c.opts.Namespace, lease.JobPrefix("", c.opts.Namespace, c.opts.Job), c.consulAddr)
	}
	return groups, nil
}

func (c *collector) group(ctx context.Context, name string, allocs map[string]alloc) (Group, error) {
	prefix := lease.KeyPrefix("", c.opts.Namespace, c.opts.Job, name)
	cctx, cancel := c.call(ctx)
	st, err := lease.ReadGroup(cctx, c.consul, prefix)
	cancel()
	if err != nil {
		return Group{}, c.consulErr(err)
	}
	if !st.LeaderExists && len(st.Candidates) == 0 && len(st.Malformed) == 0 {
		hint := ""
		if others, err := c.groups(ctx); err == nil {
			hint = fmt.Sprintf(" (groups of the job: %s)", strings.Join(others, ", "))
		}
		return Group{}, fmt.Errorf("%w for group %q of job %q in namespace %q (nothing under %s/ in Consul at %s)%s: check -group",
			ErrNotFound, name, c.opts.Job, c.opts.Namespace, prefix, c.consulAddr, hint)
	}
	src := sources{state: st}
	var ids []string
	for _, cand := range st.Candidates {
		ids = append(ids, cand.ID)
	}
	if st.Leader.Held && st.Leader.Info.ID != "" && !slices.Contains(ids, st.Leader.Info.ID) {
		ids = append(ids, st.Leader.Info.ID)
	}
	var warnings []string
	if allocs != nil {
		src.allocs = map[string]alloc{}
		for id, a := range allocs {
			if a.Group == name {
				src.allocs[id] = a
				if !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
		}
	}
	svcs, svcName, err := c.services(ctx, name, ids)
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("service health unknown: %v", err))
	} else {
		src.services, src.service = svcs, svcName
	}
	g := assemble(name, src)
	g.Warnings = append(g.Warnings, warnings...)
	return g, nil
}

// services finds the instances' service registrations and their check
// health, keyed by instance id.
func (c *collector) services(ctx context.Context, group string, ids []string) (map[string]service, string, error) {
	name := c.opts.Service
	if name == "" {
		name = c.opts.Job + "-" + group
	}
	found, err := c.serviceEntries(ctx, name, ids)
	if err != nil || len(found) > 0 || c.opts.Service != "" || len(ids) == 0 {
		return found, name, err
	}
	// The jobspec may name the service: look among the services carrying a
	// role tag for registrations of these instances.
	cctx, cancel := c.call(ctx)
	all, _, err := c.consul.Catalog().Services((&consulapi.QueryOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return nil, "", c.consulErr(err)
	}
	var names []string
	for n, tags := range all {
		if n != name && (slices.Contains(tags, string(RoleMaster)) || slices.Contains(tags, string(RoleClone))) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		found, err := c.serviceEntries(ctx, n, ids)
		if err != nil {
			return nil, "", err
		}
		if len(found) > 0 {
			return found, n, nil
		}
	}
	return map[string]service{}, "", nil
}

// serviceEntries reads service name's instances with their checks and keeps
// those registered by the given instances (service id <name>-<instance id>).
func (c *collector) serviceEntries(ctx context.Context, name string, ids []string) (map[string]service, error) {
	cctx, cancel := c.call(ctx)
	entries, _, err := c.consul.Health().Service(name, "", false, (&consulapi.QueryOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return nil, c.consulErr(err)
	}
	out := map[string]service{}
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		for _, id := range ids {
			if e.Service.ID == name+"-"+id {
				host := e.Service.Address
				if host == "" && e.Node != nil {
					host = e.Node.Address
				}
				out[id] = service{ID: e.Service.ID, Name: name, Role: e.Service.Meta["bedrock_role"], Health: checkHealth(e),
					Addr: net.JoinHostPort(host, strconv.Itoa(e.Service.Port))}
			}
		}
	}
	return out, nil
}

// checkHealth is the status of the service's own checks (Consul's
// aggregation: critical beats warning beats passing); a critical node
// check (e.g. serfHealth of a lost node) makes it critical too, since Consul
// then routes no traffic there.
func checkHealth(e *consulapi.ServiceEntry) string {
	var own, node consulapi.HealthChecks
	for _, hc := range e.Checks {
		switch hc.ServiceID {
		case e.Service.ID:
			own = append(own, hc)
		case "":
			node = append(node, hc)
		}
	}
	if len(node) > 0 && node.AggregatedStatus() == consulapi.HealthCritical {
		return consulapi.HealthCritical
	}
	if len(own) == 0 {
		return HealthNoCheck
	}
	return own.AggregatedStatus()
}

// consulErr turns a Consul client error into one that says what to do.
func (c *collector) consulErr(err error) error {
	var se consulapi.StatusError
	switch {
	case errors.As(err, &se) && (se.Code == 401 || se.Code == 403):
		return fmt.Errorf("consul at %s refused the request (%w): set CONSUL_HTTP_TOKEN to a token that may read the keys under %s/ and the services",
			c.consulAddr, err, lease.JobPrefix("", c.opts.Namespace, c.opts.Job))
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("consul at %s did not answer within %s (%w): check the address (-consul or CONSUL_HTTP_ADDR) or raise -timeout",
			c.consulAddr, c.opts.Timeout, err)
	case isUnreachable(err):
		return fmt.Errorf("cannot reach Consul at %s (%w): point -consul or CONSUL_HTTP_ADDR at a Consul agent's HTTP address (host:port)",
			c.consulAddr, err)
	default:
		return fmt.Errorf("consul at %s: %w", c.consulAddr, err)
	}
}

func isUnreachable(err error) bool {
	var ue *url.Error
	var oe *net.OpError
	var de *net.DNSError
	return errors.As(err, &oe) || errors.As(err, &de) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ue) && !errors.Is(err, context.Canceled))
}
