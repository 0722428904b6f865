package driver

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// Task events of a gated app. Besides starting and stopping the app, the
// driver tells what the syncer does, from its announcements:
//
//	Elected master (term 7): app started
//	Demoted (term 7): app stopped (stepping down)
//	Following 127.0.0.3:2345 at lag 0
//	Following 127.0.0.3:2345: initial sync
//	Initial sync 63%
//
// "Following" is told when the master changes (held up to followHold while
// a quick initial sync finishes, so that a caught-up clone's fail-over says
// one thing), and then when the lag changes notably: into another order of
// magnitude, held for lagSettle (a busy app's momentary lag of a few
// operations is not news), at most every lagEvery; and at once when the lag
// is back to 0 after a lag was told. Initial sync progress is told every 10%
// or every progressEvery. Nomad keeps a task's last few events only: the
// limits keep role changes from being pushed out by routine news.
const (
	followHold    = 2 * time.Second
	lagSettle     = 3 * time.Second
	lagEvery      = 30 * time.Second
	progressEvery = 10 * time.Second
)

// gateEvents turns the gate's view into task events; the zero value is
// ready. Not safe for concurrent use: the gate loop owns it.
type gateEvents struct {
	masterTerm  uint64 // term of the last master state seen; 0 once the demotion is told
	stopPending bool   // the app was stopped for a role change not told yet
	lastMsg     string // the last syncer message told
	lastNotice  string // the last standing notice told

	follow      string    // the master followed (address), "" when none
	followTerm  uint64    // ... and its term
	followSince time.Time // when it became the master followed
	followSaid  bool      // a Following event was told for it
	syncSaid    bool      // ... saying caught up, with a lag
	lagSaid     uint64    // the lag last told
	lagAt       time.Time // when
	lagBucket   int       // the lag's order of magnitude now
	lagSince    time.Time // since when
	pctSaid     int       // the initial sync's progress last told
	pctAt       time.Time // when
}

// started is the event for the app started as master.
func (e *gateEvents) started(term uint64) string {
	e.masterTerm, e.stopPending = term, false
	return fmt.Sprintf("Elected master (term %d): app started", term)
}

// failed is the event for the app that ended by itself while master.
func (e *gateEvents) failed(term uint64) string {
	e.masterTerm, e.stopPending = 0, false
	return fmt.Sprintf("App exited while master (term %d): lock handed to a caught-up clone; the restart block brings it back as a clone", term)
}

// stopped is the event for the app stopped because the gate closed; ""
// when the syncer announced another role: observe tells the demotion.
func (e *gateEvents) stopped(now time.Time, st announce.Status) string {
	if fresh(now, st) && st.State.Role != core.RoleMaster {
		e.stopPending = true
		return ""
	}
	return "App stopped: " + st.Reason
}

// fresh tells whether the gate's state is the syncer's word of now.
func fresh(now time.Time, st announce.Status) bool {
	return st.Connected && !st.ReceivedAt.IsZero() && now.Sub(st.ReceivedAt) < announce.DefaultSilence
}

// observe returns the events the gate's view calls for at now. Call it at
// every change and periodically (the held and rate-limited events are
// told by later calls).
func (e *gateEvents) observe(now time.Time, st announce.Status) []string {
	if !fresh(now, st) {
		return nil // a silent syncer: the stop event, if any, told it
	}
	s := st.State
	var out []string
	if s.Notice != e.lastNotice {
		e.lastNotice = s.Notice
		if s.Notice != "" {
			out = append(out, capitalize(s.Notice))
		}
	}
	if s.Role == core.RoleMaster {
		e.masterTerm, e.stopPending = s.Term, false
		e.follow, e.followTerm = "", 0
		return out
	}
	if e.masterTerm != 0 || e.stopPending {
		term := e.masterTerm
		if term == 0 {
			term = s.Term // a recovered master's app: its term is the syncer's
		}
		msg := fmt.Sprintf("Demoted (term %d): app stopped", term)
		if why := strings.TrimPrefix(s.Message, "demoted: "); why != "" {
			msg += " (" + why + ")"
		}
		out = append(out, msg)
		e.masterTerm, e.stopPending, e.lastMsg = 0, false, s.Message
	}
	if s.Role == core.RoleClone && s.MasterAddr != "" {
		// The syncer's warnings on a clone (not receiving from the master, not promotable,
		// the group waiting for a caught-up clone) are told; its routine messages are not:
		// following tells the role and the lag.
		if s.Message != e.lastMsg {
			e.lastMsg = s.Message
			if announce.Warning(s.Message) {
				out = append(out, capitalize(s.Message))
			}
		}
		if msg := e.following(now, s); msg != "" {
			out = append(out, msg)
		}
		return out
	}
	e.follow, e.followTerm = "", 0
	if s.Message != "" && s.Message != e.lastMsg {
		e.lastMsg = s.Message
		out = append(out, capitalize(s.Message))
	}
	return out
}

// following is the event, if any, of a clone following s.MasterAddr.
func (e *gateEvents) following(now time.Time, s announce.State) string {
	if s.MasterAddr != e.follow || s.Term != e.followTerm {
		e.follow, e.followTerm, e.followSince = s.MasterAddr, s.Term, now
		e.followSaid, e.syncSaid = false, false
		e.pctSaid, e.pctAt = -1, time.Time{}
	}
	if s.CaughtUp {
		b := lagBucket(s.Lag)
		if b != e.lagBucket || e.lagSince.IsZero() {
			e.lagBucket, e.lagSince = b, now
		}
		switch {
		case !e.syncSaid: // a new master, or the initial sync done
		case s.Lag == 0 && e.lagSaid > 0: // back to 0
		case b != lagBucket(e.lagSaid) && now.Sub(e.lagSince) >= lagSettle && now.Sub(e.lagAt) >= lagEvery:
		default:
			return ""
		}
		e.followSaid, e.syncSaid, e.lagSaid, e.lagAt = true, true, s.Lag, now
		return fmt.Sprintf("Following %s at lag %d", s.MasterAddr, s.Lag)
	}
	pct := -1
	if p := s.Progress; p != nil && !p.Done {
		pct = p.Percent()
	}
	if !e.followSaid {
		if now.Sub(e.followSince) < followHold {
			return ""
		}
		e.followSaid, e.pctSaid, e.pctAt = true, pct, now
		return fmt.Sprintf("Following %s: initial sync", s.MasterAddr)
	}
	if pct < 0 {
		return ""
	}
	if pct/10 > e.pctSaid/10 || pct != e.pctSaid && now.Sub(e.pctAt) >= progressEvery {
		e.pctSaid, e.pctAt = pct, now
		return fmt.Sprintf("Initial sync %d%%", pct)
	}
	return ""
}

// lagBucket is the lag's order of magnitude: 0 for 0, 1 for 1-9, 2 for
// 10-99, ...
func lagBucket(lag uint64) int {
	b := 0
	for ; lag > 0; lag /= 10 {
		b++
	}
	return b
}

func capitalize(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + s[n:]
}
