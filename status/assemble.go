package status

import (
	"sort"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// service is one instance's service registration as Consul's health
// endpoint shows it.
type service struct {
	ID     string // service instance id: <service>-<allocation id>
	Name   string // service name
	Role   string // bedrock_role meta (master or clone)
	Health string // aggregated check status, or HealthNoCheck
	Addr   string // the app's address, host:port, as registered
}

// alloc is what Nomad says of one allocation.
type alloc struct {
	ID     string
	Node   string
	Group  string
	Status string // client status: pending, running, complete, failed, lost
}

// sources is everything known about one group, read from Consul and Nomad.
type sources struct {
	state lease.GroupState
	// services maps instance ids to their registration; nil when the
	// services could not be read (health is then unknown).
	services map[string]service
	// service is the service name the registrations were found under.
	service string
	// allocs maps allocation ids of this group to Nomad's view; nil when
	// Nomad was not asked (or did not answer).
	allocs map[string]alloc
}

// assemble turns what was read into the group's rows and verdict. It is
// pure so that the merging rules are tested without Consul or Nomad:
//   - every candidacy is a row: clone while its session lives, down after;
//   - the lock holder is the master, with the lock's LockIndex as its term,
//     even when its candidacy is missing (its row then comes from the lock's
//     value);
//   - positions are compared with the most advanced one known among the
//     master and the live clones (the master writes its position into
//     Consul only when it campaigns, clones republish theirs about once a
//     second): lag is counted in operations within that position's term;
//   - with Nomad, a running or pending allocation without a candidacy is an
//     absent row, and rows get the allocation's status (and node when the
//     candidacy named none).
func assemble(name string, src sources) Group {
	st := src.state
	g := Group{Name: name, KeyPrefix: st.Prefix, Term: st.Leader.Term, Service: src.service}
	if st.HighWater.Set() {
		hw := st.HighWater
		g.HighWater = &hw
	}
	if st.HighWaterError != "" {
		g.Warnings = append(g.Warnings, st.HighWaterError)
	}
	rows := map[string]*Instance{}
	var all []*Instance
	add := func(in *Instance) *Instance {
		rows[in.ID] = in
		all = append(all, in)
		return in
	}
	for _, c := range st.Candidates {
		in := add(&Instance{ID: c.ID, Node: c.Node, Role: RoleClone, Term: c.Term, Position: c.Position,
			CaughtUp: c.CaughtUp, Live: c.Live, SyncAddress: c.Address, Waiting: c.Waiting})
		if !c.Live {
			in.Role = RoleDown
		}
	}
	var master *Instance
	if h := st.Leader; h.Held {
		id := h.Info.ID
		if id == "" {
			id = "session:" + h.Session // a holder whose value is unreadable is still the master
		}
		g.Master = id
		master = rows[id]
		if master == nil {
			master = add(&Instance{ID: id, Node: h.Info.Node, SyncAddress: h.Info.Address, Position: h.Info.Position})
		}
		master.Role, master.Term, master.Live, master.CaughtUp = RoleMaster, h.Term, true, true
		if master.Position.Less(h.Info.Position) {
			master.Position = h.Info.Position
		}
		if master.SyncAddress == "" {
			master.SyncAddress = h.Info.Address
		}
		if master.Node == "" {
			master.Node = h.Info.Node
		}
	}

	// the most advanced position known among the live instances
	var ref core.Position
	for _, in := range all {
		if in.Live && ref.Less(in.Position) {
			ref = in.Position
		}
	}
	if master != nil {
		master.Position = ref // the master is at least as far as anyone it replicates to
	}
	for _, in := range all {
		if in == master || in.Position.Term != ref.Term {
			continue
		}
		lag := uint64(0)
		if in.Position.Seq < ref.Seq {
			lag = ref.Seq - in.Position.Seq
		}
		in.LagOps = &lag
	}

	for _, in := range all {
		if src.services == nil {
			in.Health = HealthUnknown
			continue
		}
		in.Health = HealthUnregistered
		if s, ok := src.services[in.ID]; ok {
			in.Health, in.ServiceID, in.ServiceRole, in.AppAddress = s.Health, s.ID, s.Role, s.Addr
		}
	}

	if src.allocs != nil {
		for _, in := range all {
			if a, ok := src.allocs[in.ID]; ok {
				in.Nomad = a.Status
				if in.Node == "" {
					in.Node = a.Node
				}
			}
		}
		ids := make([]string, 0, len(src.allocs))
		for id := range src.allocs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			a := src.allocs[id]
			if rows[id] == nil && (a.Status == "running" || a.Status == "pending") {
				h := HealthUnknown
				if src.services != nil {
					h = HealthUnregistered
				}
				add(&Instance{ID: id, Node: a.Node, Role: RoleAbsent, Nomad: a.Status, Health: h})
			}
		}
	}

	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if ra, rb := roleRank(a.Role), roleRank(b.Role); ra != rb {
			return ra < rb
		}
		if a.Position != b.Position {
			return b.Position.Less(a.Position) // most caught up first: the promotion order
		}
		return a.ID < b.ID
	})
	g.Instances = make([]Instance, 0, len(all))
	for _, in := range all {
		g.Instances = append(g.Instances, *in)
	}
	for _, k := range st.Malformed {
		g.Warnings = append(g.Warnings, "ignored a malformed candidacy at "+k)
	}
	Evaluate(&g)
	return g
}

func roleRank(r Role) int {
	switch r {
	case RoleMaster:
		return 0
	case RoleClone:
		return 1
	case RoleAbsent:
		return 2 // running in Nomad: more relevant than a leftover candidacy
	default:
		return 3
	}
}
