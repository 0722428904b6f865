package lease

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"
)

// This file reads a group's election keys without a session, for tools that observe the
// election rather than take part in it (the status CLI). It relies on the same key layout as
// Consul: <prefix>/leader and <prefix>/candidates/<id>.

// JobPrefix returns the key prefix under which every group of a job keeps its keys:
// root/<namespace>/<job>, escaped exactly like KeyPrefix.
func JobPrefix(root, namespace, job string) string {
	return strings.TrimSuffix(KeyPrefix(root, namespace, job, ""), "/")
}

// GroupLeaderKey is the lock key of the group whose prefix (see KeyPrefix) is given; it is the
// key a Consul Leaser on that prefix locks.
func GroupLeaderKey(prefix string) string { return prefix + "/leader" }

// GroupHighWaterKey is the high-water key of the group whose prefix is given (see highwater.go).
func GroupHighWaterKey(prefix string) string { return prefix + "/highwater" }

// GroupCandidatesPrefix is the folder holding the candidacy keys of the group whose prefix is
// given (with the trailing slash, as Consul's KV list wants it).
func GroupCandidatesPrefix(prefix string) string { return prefix + "/candidates/" }

// GroupState is one consistent snapshot of a group's election keys.
type GroupState struct {
	// Prefix is the group's key prefix.
	Prefix string
	// Leader is the lock key's state; the zero Holder when the key does not exist.
	Leader Holder
	// LeaderExists tells whether the lock key exists at all (it survives its holders, so a
	// missing key means the group never elected anybody under this prefix).
	LeaderExists bool
	// Candidates are the published candidacies, live or not, ordered by id.
	Candidates []Candidate
	// Malformed lists candidacy keys whose value is not a candidacy (reported, not fatal).
	Malformed []string
	// HighWater is the group's high-water mark: the position a clone must hold to be
	// promoted (zero when none was published).
	HighWater HighWater
	// HighWaterError tells why the high-water key could not be decoded ("" when it could).
	HighWaterError string
}

// ReadGroup reads the lock key and the candidacies under prefix in one KV listing, so that the
// holder and the candidates come from the same Consul index. A Consul error is returned
// wrapped; a group without keys yields a GroupState with nothing in it.
func ReadGroup(ctx context.Context, c *api.Client, prefix string) (GroupState, error) {
	st := GroupState{Prefix: prefix}
	pairs, _, err := c.KV().List(prefix+"/", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return st, fmt.Errorf("lease: read %s/: %w", prefix, err)
	}
	leader, cands, hwKey := GroupLeaderKey(prefix), GroupCandidatesPrefix(prefix), GroupHighWaterKey(prefix)
	for _, p := range pairs {
		switch {
		case p.Key == leader:
			st.Leader, st.LeaderExists = holderOf(p), true
		case p.Key == hwKey:
			hw, err := decodeHighWater(p)
			st.HighWater = hw
			if err != nil {
				st.HighWaterError = err.Error()
			}
		case strings.HasPrefix(p.Key, cands):
			var info Info
			if err := json.Unmarshal(p.Value, &info); err != nil || info.ID == "" {
				st.Malformed = append(st.Malformed, p.Key)
				continue
			}
			st.Candidates = append(st.Candidates, Candidate{Info: info, Live: p.Session != ""})
		}
	}
	sort.Slice(st.Candidates, func(i, j int) bool { return st.Candidates[i].ID < st.Candidates[j].ID })
	return st, nil
}

// Groups lists the groups of a job that have election keys under JobPrefix(root, namespace,
// job), unescaped and sorted. A job without keys yields an empty list and no error.
func Groups(ctx context.Context, c *api.Client, root, namespace, job string) ([]string, error) {
	prefix := JobPrefix(root, namespace, job) + "/"
	keys, _, err := c.KV().Keys(prefix, "/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("lease: list groups under %s: %w", prefix, err)
	}
	var out []string
	for _, k := range keys {
		rest := strings.TrimPrefix(k, prefix)
		seg, sub := strings.CutSuffix(rest, "/")
		if !sub || seg == "" || strings.Contains(seg, "/") {
			continue // a plain key beside the groups, not a group's folder
		}
		name, err := url.PathUnescape(seg)
		if err != nil {
			name = seg
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}
