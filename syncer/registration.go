package syncer

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

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
