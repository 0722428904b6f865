package syncer

import (
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// TestRegistrationView: what each instance's service registration says,
// by role and by what the driver's gate reports on the app.
func TestRegistrationView(t *testing.T) {
	const m = "127.0.0.3:2345"
	master := announce.State{Role: core.RoleMaster, Term: 7}
	for _, c := range []struct {
		name     string
		st       announce.State
		app      announce.App
		ss       Status
		master   bool
		syncer   instanceCheck
		appCheck instanceCheck
	}{
		{"master, app running", master, announce.App{Reporting: 1, Running: true}, Status{}, true,
			instanceCheck{api.HealthPassing, "master at term 7"}, instanceCheck{api.HealthPassing, "app running (master at term 7)"}},
		{"master, app not running: out of DNS", master, announce.App{Reporting: 1}, Status{}, true,
			instanceCheck{api.HealthPassing, "master at term 7"}, instanceCheck{api.HealthCritical, "app not running (master at term 7)"}},
		{"master, no gate to tell", master, announce.App{}, Status{}, true,
			instanceCheck{api.HealthPassing, "master at term 7"}, instanceCheck{api.HealthPassing, "master at term 7; no driver gate reports on the app"}},
		{"caught-up clone", announce.State{Role: core.RoleClone, Term: 7, MasterAddr: m, CaughtUp: true, Lag: 3}, announce.App{Reporting: 1}, Status{}, false,
			instanceCheck{api.HealthPassing, "clone following " + m + ", lag 3"}, instanceCheck{api.HealthPassing, "not master: the app runs on the master only"}},
		{"initial sync", announce.State{Role: core.RoleClone, Term: 7, MasterAddr: m, Progress: &core.Progress{BytesTotal: 100, BytesDone: 63}}, announce.App{}, Status{}, false,
			instanceCheck{api.HealthPassing, "initial sync 63%"}, instanceCheck{api.HealthPassing, "not master: the app runs on the master only"}},
		{"clone in trouble", announce.State{Role: core.RoleClone, Term: 7, MasterAddr: m}, announce.App{}, Status{Error: "dial master: refused"}, false,
			instanceCheck{api.HealthWarning, "clone following " + m + ", syncing (error: dial master: refused)"}, instanceCheck{api.HealthPassing, "not master: the app runs on the master only"}},
		{"candidate", announce.State{Role: core.RoleCandidate, Message: "waiting for the election"}, announce.App{}, Status{}, false,
			instanceCheck{api.HealthPassing, "candidate: waiting for the election"}, instanceCheck{api.HealthPassing, "not master: the app runs on the master only"}},
		{"stepping down", announce.State{Role: core.RoleClone, Term: 7, Message: "stepping down"}, announce.App{Reporting: 1, Running: true}, Status{}, false,
			instanceCheck{api.HealthPassing, "clone: stepping down"}, instanceCheck{api.HealthPassing, "not master: the app runs on the master only"}},
	} {
		v := viewOf(c.st, c.app, c.ss)
		if v.master != c.master || v.syncer != c.syncer || v.app != c.appCheck {
			t.Errorf("%s: %+v, want master=%v syncer=%+v app=%+v", c.name, v, c.master, c.syncer, c.appCheck)
		}
	}
}
