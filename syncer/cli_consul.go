package syncer

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/election"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// tagList collects repeated -tag flags.
type tagList []string

func (t *tagList) String() string     { return strings.Join(*t, ",") }
func (t *tagList) Set(v string) error { *t = append(*t, v); return nil }

// usesConsul tells whether the command line asks for the elected mode.
func usesConsul(args []string) bool {
	for _, a := range args {
		if a == "-consul" || a == "--consul" || strings.HasPrefix(a, "-consul=") || strings.HasPrefix(a, "--consul=") {
			return true
		}
	}
	return false
}

// mainConsul is `syncer -consul ADDR ...`: the role comes from the Consul
// election of the group, is announced on the role socket for the driver,
// and the app's service is registered with the role as a tag. This is what
// the bedrock driver runs for a syncer task.
func mainConsul(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("syncer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "", "data directory to replicate (required)")
	listen := fs.String("listen", "", "address this syncer accepts clones on when master (required)")
	advertise := fs.String("advertise", "", "address clones dial to reach this syncer (default: -listen)")
	consulAddr := fs.String("consul", "127.0.0.1:8500", "the node's Consul agent (the session is bound to its node)")
	tokenEnv := fs.String("consul-token-env", "BEDROCK_CONSUL_TOKEN", "environment variable holding the Consul ACL token")
	ns := fs.String("namespace", "default", "Nomad namespace of the group")
	job := fs.String("job", "", "Nomad job id (required)")
	group := fs.String("group", "", "Nomad task group (required)")
	id := fs.String("id", "", "instance id: the allocation id (required)")
	node := fs.String("node", "", "node name, for humans")
	sock := fs.String("announce", "", "unix socket the role is announced on (required)")
	service := fs.String("service", "", "Consul service of the app (default: <job>-<group>)")
	servicePort := fs.Int("service-port", 0, "the app's port for the service registration (0: no registration)")
	var tags tagList
	fs.Var(&tags, "tag", "a service tag only the master carries (repeatable)")
	secretEnv := fs.String("secret-env", DefaultSecretEnv, "environment variable holding the shared secret")
	metrics := fs.String("metrics", "", "address for /metrics and /status (optional)")
	ttl := fs.Duration("session-ttl", lease.DefaultTiming().TTL, "Consul session TTL (the servers' session_ttl_min must allow it)")
	lockDelay := fs.Duration("lock-delay", lease.DefaultTiming().LockDelay, "Consul lock-delay: how long a lost lock stays blocked")
	sessionFile := fs.String("session-file", "", "where to record the Consul session, so the driver can release the lock if this process dies (optional)")
	level := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for name, v := range map[string]string{"data": *data, "listen": *listen, "job": *job, "group": *group, "id": *id, "announce": *sock} {
		if v == "" {
			fmt.Fprintf(stderr, "syncer: -%s is required with -consul\n", name)
			return 2
		}
	}
	if *advertise == "" {
		*advertise = *listen
	}
	if *service == "" {
		*service = *job + "-" + *group
	}
	secret := os.Getenv(*secretEnv)
	if len(secret) < 16 {
		fmt.Fprintf(stderr, "syncer: environment variable %s must hold the shared secret (at least 16 bytes)\n", *secretEnv)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "syncer", Level: hclog.LevelFromString(*level), JSONFormat: true, Output: stderr})

	client, err := api.NewClient(&api.Config{Address: *consulAddr, Token: os.Getenv(*tokenEnv)})
	if err != nil {
		fmt.Fprintf(stderr, "syncer: consul: %v\n", err)
		return 2
	}
	lcfg := lease.ConsulConfig{Client: client, Namespace: *ns, Job: *job, Group: *group, ID: *id, Logger: log.Named("lease"),
		Timing: lease.Timing{TTL: *ttl, LockDelay: *lockDelay}}
	if *sessionFile != "" {
		key := lease.KeyPrefix("", *ns, *job, *group) + "/leader"
		lcfg.OnSession = func(session string) {
			if err := lease.WriteSessionRecord(*sessionFile, lease.SessionRecord{Session: session, LeaderKey: key}); err != nil {
				log.Warn("recording the session failed: if this process dies, the group waits for the session's TTL", "error", err)
			}
		}
	}
	leaser, err := lease.NewConsul(ctx, lcfg)
	if err != nil {
		log.Error("election unavailable", "error", err)
		return 1
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = leaser.Close(cctx)
	}()
	ann, err := announce.Listen(ctx, *sock, announce.AnnouncerConfig{Logger: log.Named("announce")})
	if err != nil {
		log.Error("role socket", "error", err)
		return 1
	}
	defer func() { _ = ann.Close() }()

	roles := &electedRoles{ch: make(chan Role, 1)}
	s, err := New(Config{
		DataDir: *data, ListenAddr: *listen, Secret: []byte(secret), ID: *id, Roles: roles,
		MetricsAddr: *metrics, Logger: log,
		OnProgress: func(p Progress) {
			if !p.Done {
				ann.Update(func(st *announce.State) {
					st.Progress = &announce.Progress{FilesTotal: p.FilesTotal, FilesDone: p.FilesDone, BytesTotal: p.BytesTotal, BytesDone: p.BytesDone}
					st.Message = "initial sync " + p.String()
				})
			}
		},
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	local := &localSyncer{s: s, id: *id, node: *node, addr: *advertise}
	el, err := election.New(election.Config{Leaser: leaser, Announcer: ann, Local: local, Logger: log.Named("election")})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	reg := &registration{client: client, log: log, service: *service, id: *service + "-" + *id, port: *servicePort, addr: hostOf(*advertise), tags: tags}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-runCtx.Done():
				return
			case r := <-el.Roles():
				roles.send(Role(r))
				reg.set(runCtx, r.Master)
			}
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- s.Run(runCtx) }()
	if err := el.Run(ctx); err != nil {
		log.Error("election failed", "error", err)
		stop()
		wg.Wait()
		if serr := <-errc; serr != nil {
			log.Error("syncer stopped", "error", serr)
		}
		reg.remove()
		return 1
	}
	stop()
	wg.Wait()
	reg.remove()
	if err := <-errc; err != nil {
		log.Error("syncer failed", "error", err)
		return 1
	}
	return 0
}

// electedRoles adapts the elector's roles to the syncer's RoleSource.
type electedRoles struct{ ch chan Role }

func (r *electedRoles) Roles(context.Context) <-chan Role { return r.ch }

func (r *electedRoles) send(role Role) {
	for {
		select {
		case r.ch <- role:
			return
		default:
		}
		select {
		case <-r.ch:
		default:
		}
	}
}

// localSyncer is the elector's view of the running syncer.
type localSyncer struct {
	s              *Syncer
	id, node, addr string
}

func (l *localSyncer) Info() lease.Info {
	st := l.s.Status()
	return lease.Info{
		ID: l.id, Node: l.node, Address: l.addr, Term: st.Term,
		Position: lease.Position{Term: st.Position.Term, Seq: st.Position.Seq}, CaughtUp: st.Synced || st.Role == "master",
	}
}

func (l *localSyncer) Serving(term uint64) bool {
	st := l.s.Status()
	return st.Role == "master" && st.Term == term
}

// registration keeps the app's service in the local Consul agent tagged
// with the instance's role; only the master carries the user tags, so
// master.<service>.service.consul and tag-routing proxies reach it alone.
type registration struct {
	client        *api.Client
	log           hclog.Logger
	service, id   string
	addr          string
	port          int
	tags          []string
	mu            sync.Mutex
	master, known bool
}

func (r *registration) set(ctx context.Context, master bool) {
	if r.port == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.known && r.master == master {
		return
	}
	tags := []string{"clone"}
	if master {
		tags = append([]string{"master"}, r.tags...)
	}
	err := r.client.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID: r.id, Name: r.service, Address: r.addr, Port: r.port, Tags: tags,
		Meta: map[string]string{"bedrock_role": tags[0]},
	}, api.ServiceRegisterOpts{}.WithContext(ctx))
	if err != nil {
		r.log.Warn("service registration failed", "service", r.service, "error", err)
		return
	}
	r.master, r.known = master, true
}

func (r *registration) remove() {
	if r.port == 0 {
		return
	}
	if err := r.client.Agent().ServiceDeregister(r.id); err != nil {
		r.log.Warn("service deregistration failed", "service", r.service, "error", err)
	}
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}
