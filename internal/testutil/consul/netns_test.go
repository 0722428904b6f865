package consul_test

import (
	"bytes"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/netns"
)

// fastGossip detects a lost node in about a second.
const fastGossip = `gossip_lan { probe_interval = "200ms" probe_timeout = "100ms" suspicion_mult = 2 }`

func TestNetnsPartitionAndHeal(t *testing.T) {
	t.Parallel()
	var sw *netns.Switch
	t.Run("cluster", func(t *testing.T) {
		testutil.RequireConsul(t)
		c := consul.Start(t, consul.WithClients(3), consul.WithNetns(), consul.WithHCL(fastGossip))
		sw = c.Switch
		testPartitionAndHeal(t, c)
	})
	if sw == nil {
		return // skipped or failed before the segment existed
	}
	// the subtest's cleanup removed every namespace and the host's link
	left, err := sw.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range left {
		t.Errorf("%s left behind", l)
	}
}

func testPartitionAndHeal(t *testing.T, c *consul.Cluster) {
	srv := c.Client()

	// the cluster is up: a leader, every member alive on the address we expect
	if leader, err := srv.Status().Leader(); err != nil || leader == "" {
		t.Fatalf("leader = %q, %v", leader, err)
	}
	if c.Server.IP != "127.0.0.1" || c.Server.AdvertiseIP != c.Switch.HostIP.String() || c.Server.Netns != "" {
		t.Errorf("server on %s advertising %s in %q, want 127.0.0.1 advertising %s in the host's namespace",
			c.Server.IP, c.Server.AdvertiseIP, c.Server.Netns, c.Switch.HostIP)
	}
	alive := aliveMembers(t, srv)
	if len(alive) != 4 {
		t.Fatalf("alive members = %v, want 4", alive)
	}
	for _, n := range c.Nodes() {
		if alive[n.Name] != n.AdvertiseIP {
			t.Errorf("member %s advertises %q, want %s", n.Name, alive[n.Name], n.AdvertiseIP)
		}
	}
	// the host reaches every client agent's HTTP API, each in its own namespace on the segment
	seenNetns := map[string]bool{}
	for _, n := range c.Clients {
		if n.Netns == "" || seenNetns[n.Netns] || !c.Switch.Subnet.Contains(mustAddr(t, n.IP)) || n.AdvertiseIP != n.IP {
			t.Errorf("%s: ip %s advertise %s netns %q: want its own namespace and an address in %s",
				n.Name, n.IP, n.AdvertiseIP, n.Netns, c.Switch.Subnet)
		}
		seenNetns[n.Netns] = true
		self, err := n.APIClient(t).Agent().Self()
		if err != nil {
			t.Fatalf("%s's HTTP API on %s: %v", n.Name, n.HTTPAddr, err)
		}
		if name, _ := self["Config"]["NodeName"].(string); name != n.Name {
			t.Errorf("agent at %s is %q, want %s", n.HTTPAddr, name, n.Name)
		}
	}
	// the server still answers on 127.0.0.1 (the address callers use) and on the segment
	if _, err := srv.KV().Put(&api.KVPair{Key: "bedrock/netns", Value: []byte("1")}, nil); err != nil {
		t.Fatalf("kv put via %s: %v", c.HTTPAddr(), err)
	}
	kv, _, err := c.Clients[2].APIClient(t).KV().Get("bedrock/netns", &api.QueryOptions{RequireConsistent: true})
	if err != nil || kv == nil || !bytes.Equal(kv.Value, []byte("1")) {
		t.Fatalf("kv get via %s = %v, %v", c.Clients[2].Name, kv, err)
	}

	// a session of client-2's node, bound to its serfHealth check (the default)
	victim := c.Clients[1]
	sid, _, err := victim.APIClient(t).Session().Create(&api.SessionEntry{Name: "netns-test", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatalf("session on %s: %v", victim.Name, err)
	}
	se, _, err := srv.Session().Info(sid, nil)
	if err != nil || se == nil || se.Node != victim.Name || !slices.Contains(append(se.Checks, se.NodeChecks...), "serfHealth") {
		t.Fatalf("session %s = %+v, %v: want one of %s bound to serfHealth", sid, se, err, victim.Name)
	}

	// partition client-2
	start := time.Now()
	c.Partition(1)
	c.Partition(1) // idempotent
	if !c.Partitioned(1) || c.Partitioned(0) {
		t.Fatalf("partitioned: client-1 %v, client-2 %v; want false, true", c.Partitioned(0), c.Partitioned(1))
	}
	if !victim.Running() {
		t.Fatalf("%s stopped running", victim.Name)
	}
	// the host cannot reach its HTTP API any more
	cfg := victim.APIConfig()
	cfg.HttpClient = &http.Client{Timeout: 500 * time.Millisecond, Transport: cfg.Transport}
	cut, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cut.Agent().Self(); err == nil {
		t.Fatalf("%s's HTTP API on %s still answers the host after Partition", victim.Name, victim.HTTPAddr)
	} else {
		t.Logf("host → %s after Partition: %v", victim.HTTPAddr, err)
	}

	c.WaitMemberStatus(victim.Name, consul.MemberFailed, 30*time.Second)
	failedAfter := time.Since(start)
	deadline := time.Now().Add(30 * time.Second)
	for {
		se, _, err := srv.Session().Info(sid, nil)
		if err == nil && se == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s of partitioned %s still there after 30s (%+v, %v)", sid, victim.Name, se, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	invalidatedAfter := time.Since(start)
	t.Logf("after Partition: %s failed in %s, its session invalidated in %s", victim.Name,
		failedAfter.Round(time.Millisecond), invalidatedAfter.Round(time.Millisecond))

	// the rest of the cluster carries on
	for _, i := range []int{0, 2} {
		n := c.Clients[i]
		if _, err := n.APIClient(t).KV().Put(&api.KVPair{Key: "bedrock/during", Value: []byte(n.Name)}, nil); err != nil {
			t.Fatalf("kv put via %s during the partition: %v", n.Name, err)
		}
	}
	c.WaitMemberStatus(c.Clients[0].Name, consul.MemberAlive, time.Second)
	c.WaitMemberStatus(c.Clients[2].Name, consul.MemberAlive, time.Second)

	// heal
	start = time.Now()
	c.Heal(1)
	c.Heal(1) // idempotent
	t.Logf("after Heal: %s alive again in %s", victim.Name, time.Since(start).Round(time.Millisecond))
	if c.Partitioned(1) {
		t.Fatalf("%s still partitioned after Heal", victim.Name)
	}
	kv, _, err = victim.APIClient(t).KV().Get("bedrock/during", &api.QueryOptions{RequireConsistent: true})
	if err != nil || kv == nil {
		t.Fatalf("kv get via healed %s = %v, %v", victim.Name, kv, err)
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("bad address %q: %v", s, err)
	}
	return a
}

func TestPartitionNeedsNetns(t *testing.T) {
	t.Parallel()
	// without WithNetns the clients are where they always were
	testutil.RequireConsul(t)
	c := consul.Start(t, consul.WithClients(1))
	if n := c.Clients[0]; n.Netns != "" || n.IP != "127.0.0.2" || n.AdvertiseIP != n.IP || c.Switch != nil {
		t.Fatalf("client without WithNetns: ip %s advertise %s netns %q switch %v", n.IP, n.AdvertiseIP, n.Netns, c.Switch)
	}
	if c.Server.AdvertiseIP != "127.0.0.1" {
		t.Fatalf("server advertises %s", c.Server.AdvertiseIP)
	}
}
