package syncer

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
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
//
// Like LiteFS's commands it goes flags → validate → run → close: usage errors (exit 2) are all
// found before anything is started, and what run opens, close releases.
func mainConsul(ctx context.Context, args []string, stderr io.Writer) int {
	var cmd consulCommand
	if err := cmd.parseFlags(args, stderr); err != nil {
		return 2
	}
	if err := cmd.validate(); err != nil {
		fmt.Fprintf(stderr, "syncer: %v\n", err)
		return 2
	}
	defer cmd.close(ctx)
	return cmd.run(ctx, stderr)
}

// consulCommand is the elected syncer's command line and what its run opens.
type consulCommand struct {
	data, listen, advertise            string
	consulAddr, tokenEnv, tokenFile    string
	consulCA, consulCert, consulKey    string
	ns, job, group, id, node           string
	sock                               string
	service                            string
	servicePort                        int
	tags                               tagList
	secretEnv, secretFile              string
	syncTLSCert, syncTLSKey, syncTLSCA string
	syncTLSName                        string
	metrics, sessionFile, level        string
	// mode, captureMount, syncAcks and syncTimeout: the replication mode (Config.Mode).
	mode, captureMount string
	syncAcks           int
	syncTimeout        time.Duration
	ttl, lockDelay     time.Duration

	// validated
	secret  string
	token   string
	syncTLS *tls.Config
	client  *api.Client

	// opened by run, released by close
	leaser *lease.Consul
	ann    *announce.Announcer
}

// parseFlags reads the command line; a bad one is told on stderr by the flag package.
func (c *consulCommand) parseFlags(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("syncer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.data, "data", "", "data directory to replicate (required)")
	fs.StringVar(&c.listen, "listen", "", "address this syncer accepts clones on when master (required)")
	fs.StringVar(&c.advertise, "advertise", "", "address clones dial to reach this syncer (default: -listen)")
	fs.StringVar(&c.consulAddr, "consul", "127.0.0.1:8500", "the node's Consul agent (the session is bound to its node)")
	fs.StringVar(&c.tokenEnv, "consul-token-env", "BEDROCK_CONSUL_TOKEN", "environment variable holding the Consul ACL token")
	fs.StringVar(&c.ns, "namespace", "default", "Nomad namespace of the group")
	fs.StringVar(&c.job, "job", "", "Nomad job id (required)")
	fs.StringVar(&c.group, "group", "", "Nomad task group (required)")
	fs.StringVar(&c.id, "id", "", "instance id: the allocation id (required)")
	fs.StringVar(&c.node, "node", "", "node name, for humans")
	fs.StringVar(&c.sock, "announce", "", "unix socket the role is announced on (required)")
	fs.StringVar(&c.service, "service", "", "Consul service of the app (default: <job>-<group>)")
	fs.IntVar(&c.servicePort, "service-port", 0, "the app's port for the service registration (0: no registration)")
	fs.Var(&c.tags, "tag", "a service tag only the master carries (repeatable)")
	fs.StringVar(&c.secretEnv, "secret-env", DefaultSecretEnv, "environment variable holding the shared secret")
	fs.StringVar(&c.secretFile, "secret-file", "", "file holding the shared secret (instead of -secret-env; what the driver passes)")
	fs.StringVar(&c.tokenFile, "consul-token-file", "", "file holding the Consul ACL token (instead of -consul-token-env; what the driver passes)")
	fs.StringVar(&c.consulCA, "consul-ca-file", "", "PEM CA bundle for a Consul agent served over TLS")
	fs.StringVar(&c.consulCert, "consul-cert-file", "", "PEM client certificate for Consul (with -consul-key-file)")
	fs.StringVar(&c.consulKey, "consul-key-file", "", "PEM client key for Consul")
	fs.StringVar(&c.syncTLSCert, "tls-cert", "", "PEM certificate for mutual TLS on the replication channel (with -tls-key and -tls-ca)")
	fs.StringVar(&c.syncTLSKey, "tls-key", "", "PEM private key for mutual TLS")
	fs.StringVar(&c.syncTLSCA, "tls-ca", "", "PEM CA bundle that peers' certificates must chain to")
	fs.StringVar(&c.syncTLSName, "tls-server-name", "bedrock-sync", "name the master's certificate must carry")
	fs.StringVar(&c.metrics, "metrics", "", "address for /metrics and /status (optional)")
	fs.DurationVar(&c.ttl, "session-ttl", lease.DefaultTiming().TTL, "Consul session TTL (the servers' session_ttl_min must allow it)")
	fs.DurationVar(&c.lockDelay, "lock-delay", lease.DefaultTiming().LockDelay, "Consul lock-delay: how long a lost lock stays blocked")
	fs.StringVar(&c.sessionFile, "session-file", "", "where to record the Consul session, so the driver can release the lock if this process dies (optional)")
	fs.StringVar(&c.level, "log-level", "info", "log level")
	fs.StringVar(&c.mode, "mode", ModeWatch, "replication mode: watch (a file watcher), async or sync (the app writes through a capture mount at -capture-mount; sync: its fsync waits for -sync-acks clones)")
	fs.StringVar(&c.captureMount, "capture-mount", "", "in async and sync mode, where the app's data is mounted (the -data directory holds the copy behind it)")
	fs.IntVar(&c.syncAcks, "sync-acks", 1, "in sync mode, how many clones must hold an fsync before it returns")
	fs.DurationVar(&c.syncTimeout, "sync-timeout", 10*time.Second, "in sync mode, how long an fsync waits for them before it fails with EIO")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("syncer flags: %w", err)
	}
	return nil
}

// validate checks the flags, fills in the defaults and reads the secret, the Consul token
// and the TLS material, so that run starts only with a usable configuration.
func (c *consulCommand) validate() error {
	for _, f := range []struct{ name, v string }{
		{"data", c.data}, {"listen", c.listen}, {"job", c.job}, {"group", c.group}, {"id", c.id}, {"announce", c.sock},
	} {
		if f.v == "" {
			return fmt.Errorf("-%s is required with -consul", f.name)
		}
	}
	if err := checkMode(c.mode, c.captureMount, c.data, c.syncAcks); err != nil {
		return err
	}
	if c.advertise == "" {
		c.advertise = c.listen
	}
	if c.service == "" {
		c.service = c.job + "-" + c.group
	}
	var err error
	if c.secret, err = readSecret(c.secretEnv, c.secretFile); err != nil {
		return err
	}
	c.token = os.Getenv(c.tokenEnv)
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return fmt.Errorf("consul token: %w", err)
		}
		c.token = strings.TrimRight(string(b), "\r\n")
	}
	if c.syncTLS, err = loadTLS(c.syncTLSCert, c.syncTLSKey, c.syncTLSCA, c.syncTLSName); err != nil {
		return err
	}
	ccfg := &api.Config{Address: c.consulAddr, Token: c.token}
	if c.consulCA != "" || c.consulCert != "" || c.consulKey != "" {
		// A Consul agent served over TLS: https unless the address says.
		if !strings.Contains(c.consulAddr, "://") {
			ccfg.Scheme = "https"
		}
		ccfg.TLSConfig = api.TLSConfig{CAFile: c.consulCA, CertFile: c.consulCert, KeyFile: c.consulKey}
	}
	if c.client, err = api.NewClient(ccfg); err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	return nil
}

// run contends for the group's lock, replicates in the role it is given, announces the role
// to the driver and keeps the service registration current until ctx ends or the election or
// the syncer fails. It returns the exit code.
func (c *consulCommand) run(ctx context.Context, stderr io.Writer) int {
	log := hclog.New(&hclog.LoggerOptions{Name: "syncer", Level: hclog.LevelFromString(c.level), JSONFormat: true, Output: stderr})
	lcfg := lease.ConsulConfig{Client: c.client, Namespace: c.ns, Job: c.job, Group: c.group, ID: c.id, Logger: log.Named("lease"),
		Timing: lease.Timing{TTL: c.ttl, LockDelay: c.lockDelay}}
	if c.sessionFile != "" {
		key := lease.KeyPrefix("", c.ns, c.job, c.group) + "/leader"
		lcfg.OnSession = func(session string) {
			if err := lease.WriteSessionRecord(c.sessionFile, lease.SessionRecord{Session: session, LeaderKey: key}); err != nil {
				log.Warn("recording the session failed: if this process dies, the group waits for the session's TTL", "error", err)
			}
		}
	}
	var notice string
	lcfg.OnTTLRaised = func(asked, used time.Duration) {
		notice = ttlNotice(asked, used, c.lockDelay)
	}
	leaser, err := lease.NewConsul(ctx, lcfg)
	if err != nil {
		log.Error("election unavailable", "error", consulHint(err, c.consulAddr))
		return 1
	}
	c.leaser = leaser
	ann, err := announce.Listen(ctx, c.sock, announce.AnnouncerConfig{Logger: log.Named("announce")})
	if err != nil {
		log.Error("role socket", "error", err)
		return 1
	}
	c.ann = ann
	if notice != "" {
		ann.SetNotice(notice)
	}

	roles := &electedRoles{ch: make(chan core.Assignment, 1)}
	s, err := New(Config{
		DataDir: c.data, ListenAddr: c.listen, Secret: []byte(c.secret), ID: c.id, Roles: roles,
		MetricsAddr: c.metrics, Logger: log, TLS: c.syncTLS,
		Mode: c.mode, CaptureMount: c.captureMount, SyncAcks: c.syncAcks, SyncTimeout: c.syncTimeout,
		OnProgress: func(p core.Progress) {
			ann.Update(func(st *announce.State) {
				if st.Role != core.RoleClone {
					return
				}
				if p.Done {
					st.Progress, st.Message = nil, "initial sync complete"
					return
				}
				st.Progress = &p
				st.Message = "initial sync " + p.String()
			})
		},
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	local := &localSyncer{s: s, id: c.id, node: c.node, addr: c.advertise}
	reg := &registration{client: c.client, log: log, service: c.service, id: c.service + "-" + c.id, port: c.servicePort,
		addr: hostOf(c.advertise), tags: c.tags, ann: ann, status: s.Status}
	el, err := election.New(election.Config{Leaser: leaser, Announcer: ann, Local: local, Logger: log.Named("election"),
		// The service drops the master tag before the lock can pass on.
		StepDown: reg.sync})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer reg.remove()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-runCtx.Done():
				return
			case r := <-el.Roles():
				roles.send(r)
			}
		}
	}()
	go func() {
		defer wg.Done()
		reg.run(runCtx)
	}()
	go tellUnreplicable(runCtx, s, ann, notice)
	// A syncer that fails in its role (a master that cannot serve clones)
	// ends the election: the elector steps down gracefully (announces,
	// waits out the deadline unless the app is proven stopped, releases),
	// and the process exits 1 for Nomad to restart it as a clone.
	elCtx, stepDown := context.WithCancel(ctx)
	defer stepDown()
	errc := make(chan error, 1)
	go func() {
		err := s.Run(runCtx)
		if err != nil && runCtx.Err() == nil {
			log.Error("syncer failed; stepping down", "error", err)
			stepDown()
		}
		errc <- err
	}()
	if err := el.Run(elCtx); err != nil {
		log.Error("election failed", "error", err)
		stop()
		wg.Wait()
		if serr := <-errc; serr != nil {
			log.Error("syncer stopped", "error", serr)
		}
		return 1
	}
	stop()
	wg.Wait()
	if err := <-errc; err != nil {
		log.Error("syncer failed", "error", err)
		return 1
	}
	return 0
}

// close releases what run opened, the role socket first and then the Consul session (which
// withdraws the candidacy and releases the lock if still held, without lock-delay).
func (c *consulCommand) close(ctx context.Context) {
	if c.ann != nil {
		_ = c.ann.Close()
	}
	if c.leaser != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = c.leaser.Close(cctx)
	}
}

// electedRoles adapts the elector's roles to the syncer's RoleSource.
type electedRoles struct{ ch chan core.Assignment }

func (r *electedRoles) Roles(context.Context) <-chan core.Assignment { return r.ch }

func (r *electedRoles) send(role core.Assignment) {
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
		Position: st.Position, CaughtUp: st.Synced || st.Role == core.RoleMaster,
	}
}

// HighWater is what a master publishes as the group's high-water mark: the
// highest position of its term a clone acknowledged (election.HighWaterReporter).
func (l *localSyncer) HighWater() core.Position {
	return l.s.HighWater()
}

// Warning says that a clone hears nothing from its master (election.WarningReporter).
func (l *localSyncer) Warning() string {
	st := l.s.Status()
	if st.Role != core.RoleClone || !st.Stalled {
		return ""
	}
	w := election.NotReceiving
	if st.Error != "" {
		w += ": " + st.Error
	}
	return w
}

// Lag is a synced clone's lag behind its master's head (election.LagReporter).
func (l *localSyncer) Lag() (uint64, bool) {
	st := l.s.Status()
	if st.Role != core.RoleClone || !st.Synced {
		return 0, false
	}
	return st.Lag, true
}

// Drain hands the app's last changes to the clones before a hand-over (election.Drainer).
func (l *localSyncer) Drain(ctx context.Context) error { return l.s.Drain(ctx) }

func (l *localSyncer) Serving(term uint64) bool {
	st := l.s.Status()
	// In a capture mode the app may start only on the mount: serving means mounted.
	return st.Role == core.RoleMaster && st.Term == term && (!l.s.capture() || st.Serving)
}

// ttlNotice is the task event that says the Consul servers raised the session TTL, what it
// costs and how to avoid it.
func ttlNotice(asked, used, lockDelay time.Duration) string {
	return fmt.Sprintf("Consul refused the %s session TTL (its session_ttl_min is %s), so the session runs with %s: "+
		"a crash or a lost node still fails over in seconds, but a master that stops renewing while its node stays healthy in Consul is replaced only after up to %s; "+
		"set session_ttl_min = \"1s\" in the Consul servers' configuration to cut that to %s",
		asked, used, used, 2*used+lockDelay, 2*asked+lockDelay)
}

// consulHint adds to a failure to reach or use Consul what the operator can do about it.
func consulHint(err error, addr string) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found") || strings.Contains(msg, "403"):
		return fmt.Errorf("%w (the Consul token, the plugin's consul.token, needs session:write on the node and key:write on the bedrock/ prefix)", err)
	case strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host") || strings.Contains(msg, "i/o timeout"):
		return fmt.Errorf("%w (no Consul agent answers at %s: start the node's Consul agent or set the plugin's consul.address)", err, addr)
	}
	return err
}

// tellUnreplicable adds to the standing notice (a task event) the names the master cannot
// replicate (longer than PATH_MAX, ...), whenever the first few of them change: clones do not
// have them, and only the operator can rename them. base is the notice already standing.
func tellUnreplicable(ctx context.Context, s *Syncer, ann *announce.Announcer, base string) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := s.Status()
		if len(st.UnreplicableNames) == 0 {
			continue
		}
		quoted := make([]string, len(st.UnreplicableNames))
		for i, n := range st.UnreplicableNames {
			quoted[i] = strconv.Quote(clipName(n))
		}
		msg := "these names cannot be replicated, clones do not have them (rename or shorten them): " + strings.Join(quoted, ", ")
		if msg == last {
			continue
		}
		last = msg
		if base != "" {
			msg = base + "; " + msg
		}
		ann.SetNotice(msg)
	}
}

// clipName shortens a name for a task event (one longer than PATH_MAX is the usual case).
func clipName(n string) string {
	if len(n) > 120 {
		return n[:60] + "…" + n[len(n)-40:]
	}
	return n
}
