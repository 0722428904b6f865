package consul_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
)

func TestClusterOneServerThreeClients(t *testing.T) {
	t.Parallel()
	testutil.RequireConsul(t)
	c := consul.Start(t, consul.WithClients(3), consul.WithStartTimeout(40*time.Second))

	if got := len(c.Nodes()); got != 4 {
		t.Fatalf("nodes = %d, want 4", got)
	}
	for i, n := range c.Clients {
		if want := "127.0.0." + string(rune('2'+i)); n.IP != want {
			t.Errorf("%s on %s, want %s", n.Name, n.IP, want)
		}
	}

	srv := c.Client()
	alive := aliveMembers(t, srv)
	if len(alive) != 4 {
		t.Fatalf("alive members = %v, want 4", alive)
	}
	for _, n := range c.Nodes() {
		if alive[n.Name] != n.IP {
			t.Errorf("member %s advertises %q, want %s", n.Name, alive[n.Name], n.IP)
		}
	}

	// KV through a client agent, read back through another client and the server
	put := c.Clients[0].APIClient(t).KV()
	if _, err := put.Put(&api.KVPair{Key: "bedrock/test", Value: []byte("hello")}, nil); err != nil {
		t.Fatalf("kv put via %s: %v", c.Clients[0].Name, err)
	}
	for _, n := range []*consul.Node{c.Clients[2], c.Server} {
		kv, _, err := n.APIClient(t).KV().Get("bedrock/test", &api.QueryOptions{RequireConsistent: true})
		if err != nil || kv == nil || !bytes.Equal(kv.Value, []byte("hello")) {
			t.Fatalf("kv get via %s = %v, %v", n.Name, kv, err)
		}
	}

	// short session TTLs are allowed (session_ttl_min = 1s)
	id, _, err := c.Clients[1].APIClient(t).Session().Create(&api.SessionEntry{TTL: "2s", Behavior: api.SessionBehaviorDelete}, nil)
	if err != nil || id == "" {
		t.Fatalf("session with 2s TTL: %q, %v", id, err)
	}
}

func TestKillAndRestartClient(t *testing.T) {
	t.Parallel()
	testutil.RequireConsul(t)
	c := consul.Start(t, consul.WithClients(2),
		// detect the lost node quickly
		consul.WithHCL(`gossip_lan { probe_interval = "200ms" probe_timeout = "100ms" suspicion_mult = 2 }`))

	victim := c.Clients[1]
	start := time.Now()
	c.KillClient(1)
	if victim.Running() {
		t.Fatalf("%s still running after KillClient", victim.Name)
	}
	c.WaitMemberStatus(victim.Name, consul.MemberFailed, 20*time.Second)
	t.Logf("%s seen failed after %s", victim.Name, time.Since(start).Round(time.Millisecond))

	c.RestartClient(1)
	if !victim.Running() {
		t.Fatalf("%s not running after RestartClient", victim.Name)
	}
	if _, err := victim.APIClient(t).KV().Put(&api.KVPair{Key: "bedrock/back", Value: []byte("1")}, nil); err != nil {
		t.Fatalf("kv put via restarted %s: %v", victim.Name, err)
	}
}

// aliveMembers maps the name of every alive member the agent knows to its address.
func aliveMembers(t *testing.T, agent *api.Client) map[string]string {
	t.Helper()
	members, err := agent.Agent().Members(false)
	if err != nil {
		t.Fatalf("members: %v", err)
	}
	alive := map[string]string{}
	for _, m := range members {
		if m.Status == consul.MemberAlive {
			alive[m.Name] = m.Addr
		}
	}
	return alive
}
