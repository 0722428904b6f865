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
	secretFile := fs.String("secret-file", "", "file holding the shared secret (instead of -secret-env; what the driver passes)")
	tokenFile := fs.String("consul-token-file", "", "file holding the Consul ACL token (instead of -consul-token-env; what the driver passes)")
	consulCA := fs.String("consul-ca-file", "", "PEM CA bundle for a Consul agent served over TLS")
	consulCert := fs.String("consul-cert-file", "", "PEM client certificate for Consul (with -consul-key-file)")
	consulKey := fs.String("consul-key-file", "", "PEM client key for Consul")
	syncTLSCert := fs.String("tls-cert", "", "PEM certificate for mutual TLS on the replication channel (with -tls-key and -tls-ca)")
	syncTLSKey := fs.String("tls-key", "", "PEM private key for mutual TLS")
	syncTLSCA := fs.String("tls-ca", "", "PEM CA bundle that peers' certificates must chain to")
	syncTLSName := fs.String("tls-server-name", "bedrock-sync", "name the master's certificate must carry")
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
	secret, err := readSecret(*secretEnv, *secretFile)
	if err != nil {
		fmt.Fprintf(stderr, "syncer: %v\n", err)
		return 2
	}
	token := os.Getenv(*tokenEnv)
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "syncer: consul token: %v\n", err)
			return 2
		}
		token = strings.TrimRight(string(b), "\r\n")
	}
	syncTLS, err := loadTLS(*syncTLSCert, *syncTLSKey, *syncTLSCA, *syncTLSName)
	if err != nil {
		fmt.Fprintf(stderr, "syncer: %v\n", err)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "syncer", Level: hclog.LevelFromString(*level), JSONFormat: true, Output: stderr})

	ccfg := &api.Config{Address: *consulAddr, Token: token}
	if *consulCA != "" || *consulCert != "" || *consulKey != "" {
		// A Consul agent served over TLS: https unless the address says.
		if !strings.Contains(*consulAddr, "://") {
			ccfg.Scheme = "https"
		}
		ccfg.TLSConfig = api.TLSConfig{CAFile: *consulCA, CertFile: *consulCert, KeyFile: *consulKey}
	}
	client, err := api.NewClient(ccfg)
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
	var notice string
	lcfg.OnTTLRaised = func(asked, used time.Duration) {
		notice = ttlNotice(asked, used, *lockDelay)
	}
	leaser, err := lease.NewConsul(ctx, lcfg)
	if err != nil {
		log.Error("election unavailable", "error", consulHint(err, *consulAddr))
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
	if notice != "" {
		ann.SetNotice(notice)
	}
	defer func() { _ = ann.Close() }()

	roles := &electedRoles{ch: make(chan core.Assignment, 1)}
	s, err := New(Config{
		DataDir: *data, ListenAddr: *listen, Secret: []byte(secret), ID: *id, Roles: roles,
		MetricsAddr: *metrics, Logger: log, TLS: syncTLS,
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
	local := &localSyncer{s: s, id: *id, node: *node, addr: *advertise}
	reg := &registration{client: client, log: log, service: *service, id: *service + "-" + *id, port: *servicePort, addr: hostOf(*advertise), tags: tags,
		ann: ann, status: s.Status}
	el, err := election.New(election.Config{Leaser: leaser, Announcer: ann, Local: local, Logger: log.Named("election"),
		// The service drops the master tag before the lock can pass on.
		StepDown: reg.sync})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}

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
	return st.Role == core.RoleMaster && st.Term == term
}

// The instance's service registration carries two TTL checks that the
// syncer keeps passing: an update every checkEvery against a TTL of
// checkTTL leaves two missed updates of slack, so a busy host does not
// flap, and a dead or frozen syncer's instance goes critical within
// checkTTL, which takes it out of Consul DNS.
//
//   - the syncer check says the syncer is alive and what it is ("master at
//     term 7", "clone following 127.0.0.3:2345, lag 0", "initial sync
//     63%"); warning while the syncer reports an error (e.g. a clone that
//     cannot reach its master). It also makes Consul remove an instance
//     that stayed critical for deregisterAfter: a syncer killed before it
//     could deregister leaves no stale instance behind.
//   - the app check says whether the instance serves the app: passing on
//     clones (their app is stopped by design) and on a master whose app
//     runs, critical on a master whose driver reports the app not running
//     (just promoted, or the app is down). Critical rather than warning
//     because Consul DNS returns warning instances by default, and
//     master.<service>.service.consul must not answer with an instance
//     where nothing listens. It carries no deregistration: a master whose
//     app is down stays registered, visibly critical.
//
// Only the master carries the "master" tag and the user tags, so
// master.<service>.service.consul resolves to the master alone: a master
// that steps down re-tags itself before it releases the lock (StepDown), one
// that dies goes critical within checkTTL. Both checks are updated at once
// on every role change and whenever the gate reports the app starting or
// stopping.
const (
	checkTTL        = 3 * time.Second
	checkEvery      = time.Second
	deregisterAfter = time.Minute // Consul's minimum; its reaper runs every 30s
)

// registration keeps the app's service in the local Consul agent tagged
// with the instance's role and its checks current. It follows the role
// announcer: what the driver is told is what Consul is told.
type registration struct {
	client      *api.Client
	log         hclog.Logger
	service, id string
	addr        string
	port        int
	tags        []string
	ann         *announce.Announcer
	status      func() Status

	mu         sync.Mutex
	registered bool
	master     bool
	sent       [2]instanceCheck // last status and output set, per check (syncer, app)
	refreshed  time.Time        // when both TTLs were last refreshed
	failing    bool             // the agent refuses: logged once, until it works again
}

// instanceCheck is one check's status and output.
type instanceCheck struct{ status, output string }

// instanceView is what the registration should say.
type instanceView struct {
	master      bool
	syncer, app instanceCheck
}

func (r *registration) checkID(i int) string {
	return r.id + [...]string{":syncer", ":app"}[i]
}

// viewOf derives the registration from the announced role, the gates'
// reports on the app and the syncer's status.
func viewOf(st announce.State, app announce.App, ss Status) instanceView {
	v := instanceView{master: st.Role == core.RoleMaster,
		syncer: instanceCheck{status: api.HealthPassing}, app: instanceCheck{status: api.HealthPassing}}
	switch {
	case v.master:
		v.syncer.output = fmt.Sprintf("master at term %d", st.Term)
	case st.Role == core.RoleClone && st.MasterAddr != "":
		switch {
		case st.CaughtUp:
			v.syncer.output = fmt.Sprintf("clone following %s, lag %d", st.MasterAddr, st.Lag)
		case st.Progress != nil && !st.Progress.Done:
			v.syncer.output = fmt.Sprintf("initial sync %d%%", st.Progress.Percent())
		default:
			v.syncer.output = fmt.Sprintf("clone following %s, syncing", st.MasterAddr)
		}
	default:
		v.syncer.output = string(st.Role)
		if st.Message != "" {
			v.syncer.output += ": " + st.Message
		}
	}
	if ss.Error != "" {
		v.syncer.status = api.HealthWarning
		v.syncer.output += " (error: " + ss.Error + ")"
	}
	switch {
	case !v.master:
		v.app.output = "not master: the app runs on the master only"
	case app.Reporting == 0:
		// The driver's gate is not connected (a plugin restart, say): it
		// cannot be told, and the app keeps running until its deadline.
		v.app.output = fmt.Sprintf("master at term %d; no driver gate reports on the app", st.Term)
	case app.Running:
		v.app.output = fmt.Sprintf("app running (master at term %d)", st.Term)
	default:
		v.app.status = api.HealthCritical
		v.app.output = fmt.Sprintf("app not running (master at term %d)", st.Term)
	}
	return v
}

// run keeps the registration current until ctx ends: at every change of
// the announced state or of the gates' reports, and every checkEvery.
func (r *registration) run(ctx context.Context) {
	if r.port == 0 {
		return
	}
	t := time.NewTicker(checkEvery)
	defer t.Stop()
	for {
		changed := r.ann.Changed()
		_ = r.update(ctx)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// sync brings the registration in line with the announced state now
// (election.Config.StepDown).
func (r *registration) sync(ctx context.Context) {
	if r.port == 0 {
		return
	}
	_ = r.update(ctx)
}

func (r *registration) update(ctx context.Context) error {
	v := viewOf(r.ann.State(), r.ann.App(), r.status())
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.updateLocked(ctx, v)
	switch {
	case err != nil && ctx.Err() != nil:
		// stopping
	case err != nil && !r.failing:
		r.failing = true
		r.log.Warn("service registration failed; retrying every second", "service", r.service, "error", err)
	case err != nil:
		r.log.Debug("service registration failed", "service", r.service, "error", err)
	case r.failing:
		r.failing = false
		r.log.Info("service registration works again", "service", r.service)
	}
	return err
}

func (r *registration) updateLocked(ctx context.Context, v instanceView) error {
	if !r.registered || r.master != v.master {
		if v.master {
			// Consul keeps an existing check's status and output when the
			// service is registered again: set the master's statuses
			// before its tag, or the tag would show for a moment with the
			// clone's passing app check, i.e. in DNS before the app runs.
			// (A check that does not exist yet takes its status from the
			// registration.) Leaving master, the tag goes first.
			for i, c := range [2]instanceCheck{v.syncer, v.app} {
				_ = r.client.Agent().UpdateTTLOpts(r.checkID(i), c.output, c.status, (&api.QueryOptions{}).WithContext(ctx))
			}
		}
		if err := r.registerLocked(ctx, v); err != nil {
			return err
		}
	}
	now := time.Now()
	due := now.Sub(r.refreshed) >= checkEvery*9/10
	for i, c := range [2]instanceCheck{v.syncer, v.app} {
		if !due && r.sent[i] == c {
			continue
		}
		if err := r.setCheck(ctx, i, c); err != nil {
			return err
		}
	}
	if due {
		r.refreshed = now
	}
	return nil
}

// setCheck sets check i (0: syncer, 1: app) and refreshes its TTL.
func (r *registration) setCheck(ctx context.Context, i int, c instanceCheck) error {
	if r.sent[i].status != c.status {
		r.log.Info("service check", "check", r.checkID(i), "status", c.status, "output", c.output)
	}
	if err := r.client.Agent().UpdateTTLOpts(r.checkID(i), c.output, c.status, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		// The agent lost the check (restarted without its state, or
		// reaped the instance): register again next time.
		r.registered = false
		return fmt.Errorf("updating check %s: %w", r.checkID(i), err)
	}
	r.sent[i] = c
	return nil
}

func (r *registration) registerLocked(ctx context.Context, v instanceView) error {
	tags := []string{string(core.RoleClone)}
	if v.master {
		tags = append([]string{string(core.RoleMaster)}, r.tags...)
	}
	ttl := checkTTL.String()
	err := r.client.Agent().ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID: r.id, Name: r.service, Address: r.addr, Port: r.port, Tags: tags,
		Meta: map[string]string{"bedrock_role": tags[0]},
		Checks: api.AgentServiceChecks{
			{CheckID: r.checkID(0), Name: "bedrock syncer", TTL: ttl, Status: v.syncer.status,
				DeregisterCriticalServiceAfter: deregisterAfter.String(),
				Notes:                          "The Bedrock syncer of this instance is alive; its output tells the role."},
			{CheckID: r.checkID(1), Name: "bedrock app", TTL: ttl, Status: v.app.status,
				Notes: "Critical on a master whose app is not running; passing on clones, whose app is stopped by design."},
		},
	}, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
	if err != nil {
		r.registered = false
		return fmt.Errorf("registering service %s: %w", r.service, err)
	}
	r.log.Info("service registered", "service", r.service, "id", r.id, "tags", tags)
	r.registered, r.master = true, v.master
	// Existing checks kept their status and output: set both now.
	r.sent = [2]instanceCheck{{status: v.syncer.status}, {status: v.app.status}}
	r.refreshed = time.Time{}
	return nil
}

func (r *registration) remove() {
	if r.port == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.registered = false
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
