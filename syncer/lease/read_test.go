package lease

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
)

func TestReadKeysMatchTheLeasersKeys(t *testing.T) {
	prefix := KeyPrefix("", "default", "my job", "g/1")
	c := &Consul{prefix: prefix}
	if got := GroupLeaderKey(prefix); got != c.LeaderKey() {
		t.Errorf("GroupLeaderKey = %q, the Leaser locks %q", got, c.LeaderKey())
	}
	if cand := c.CandidateKey("alloc-1"); !strings.HasPrefix(cand, GroupCandidatesPrefix(prefix)) {
		t.Errorf("candidacy key %q is not under %q", cand, GroupCandidatesPrefix(prefix))
	}
	if got, want := JobPrefix("", "default", "my job"), "bedrock/default/my%20job"; got != want {
		t.Errorf("JobPrefix = %q, want %q", got, want)
	}
	if !strings.HasPrefix(prefix, JobPrefix("", "default", "my job")+"/") {
		t.Errorf("group prefix %q is not under the job prefix", prefix)
	}
}

// TestReadGroupFromConsul reads what real Leasers write: the holder with its term, live
// candidacies, a withdrawn one gone, a malformed one reported, and the group listing.
func TestReadGroupFromConsul(t *testing.T) {
	testutil.RequireConsul(t)
	cl := consul.Start(t)
	client := cl.Client()
	const root = "readtest"
	newLeaser := func(id string) *Consul {
		return newConsul(t, ConsulConfig{Client: client, Root: root, Namespace: "default", Job: "web", Group: "g/1", ID: id})
	}
	ctx := ctxT(t, 30*time.Second)
	prefix := KeyPrefix(root, "default", "web", "g/1")

	t.Run("unknown job has no groups", func(t *testing.T) {
		groups, err := Groups(ctx, client, root, "default", "nope")
		if err != nil || len(groups) != 0 {
			t.Fatalf("Groups = %v, %v; want none", groups, err)
		}
		st, err := ReadGroup(ctx, client, KeyPrefix(root, "default", "nope", "g"))
		if err != nil || st.LeaderExists || len(st.Candidates) != 0 {
			t.Fatalf("ReadGroup of nothing = %+v, %v", st, err)
		}
	})

	a, b := newLeaser("a"), newLeaser("b")
	if err := a.Publish(ctx, info("a", 7)); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, info("b", 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx, info("a", 7)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.KV().Put(&api.KVPair{Key: GroupCandidatesPrefix(prefix) + "junk", Value: []byte("{not json")}, nil); err != nil {
		t.Fatal(err)
	}

	t.Run("holder and live candidates", func(t *testing.T) {
		st, err := ReadGroup(ctx, client, prefix)
		if err != nil {
			t.Fatal(err)
		}
		pair, _, err := client.KV().Get(GroupLeaderKey(prefix), nil)
		if err != nil || pair == nil {
			t.Fatalf("leader key: %v %v", pair, err)
		}
		if !st.LeaderExists || !st.Leader.Held || st.Leader.Info.ID != "a" || st.Leader.Session != a.Session() || st.Leader.Term != pair.LockIndex {
			t.Errorf("leader = %+v (exists %v), want held by a at term %d", st.Leader, st.LeaderExists, pair.LockIndex)
		}
		var ids []string
		for _, c := range st.Candidates {
			if !c.Live {
				t.Errorf("candidate %s not live", c.ID)
			}
			ids = append(ids, c.ID)
		}
		if !reflect.DeepEqual(ids, []string{"a", "b"}) {
			t.Errorf("candidates = %v, want [a b]", ids)
		}
		if len(st.Malformed) != 1 || !strings.HasSuffix(st.Malformed[0], "/junk") {
			t.Errorf("malformed = %v, want the junk key", st.Malformed)
		}
	})

	t.Run("groups are listed unescaped", func(t *testing.T) {
		groups, err := Groups(ctx, client, root, "default", "web")
		if err != nil || !reflect.DeepEqual(groups, []string{"g/1"}) {
			t.Fatalf("Groups = %v, %v; want [g/1]", groups, err)
		}
	})

	t.Run("closed leasers leave a free lock and no candidacies", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := b.Close(cctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(cctx); err != nil {
			t.Fatal(err)
		}
		st, err := ReadGroup(ctx, client, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if !st.LeaderExists || st.Leader.Held || st.Leader.Term != 1 {
			t.Errorf("leader after close = %+v, want a free key at term 1", st.Leader)
		}
		if len(st.Candidates) != 0 {
			t.Errorf("candidates after close = %+v, want none", st.Candidates)
		}
	})

	t.Run("unreachable consul is an error", func(t *testing.T) {
		dead, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := ReadGroup(cctx, dead, prefix); err == nil {
			t.Error("ReadGroup against a closed port succeeded")
		}
		if _, err := Groups(cctx, dead, root, "default", "web"); err == nil {
			t.Error("Groups against a closed port succeeded")
		}
	})
}
