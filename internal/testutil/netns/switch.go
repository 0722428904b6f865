package netns

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
)

// Switch is a private layer-2 segment (one IPv4 /24) joining the host to network namespaces of
// its own:
//
//	host namespace                hub namespace "bedrock-<id>-hub"       "bedrock-<id>-<n>"
//	bedrock-<id> (.1/24) ──veth── host ┐
//	                                   br (bridge) ─ p<n> ──veth── eth0 (.<n+1>/24), lo up
//
// The bridge lives in a namespace of its own so that neither the host's firewall (with
// br_netfilter loaded, bridged frames traverse the host's iptables FORWARD chain, which Docker
// sets to DROP) nor its forwarding settings are involved: traffic between two attached namespaces
// is bridged inside the hub; traffic between the host and a namespace is plain local delivery on
// the host's end of the segment. The host gets one interface (bedrock-<id>) and a connected route
// for the /24; nothing else on the host changes. Attached namespaces get no default route: they
// reach the /24 and nothing beyond it.
//
// The /24 is picked at random in 198.18.0.0/15 (RFC 2544: reserved for network testing) or, failing
// that, in 10.0.0.0/8, among subnets no host route overlaps; concurrent switches (in any process)
// never share one. Close removes everything.
type Switch struct {
	// ID is the random hex id in every name of this switch.
	ID string
	// Subnet is the segment's IPv4 /24.
	Subnet netip.Prefix
	// HostIP is the host's address on the segment (.1), on HostLink in the host namespace.
	HostIP netip.Addr
	// HostLink is the host's interface on the segment: "bedrock-<id>".
	HostLink string
	// Hub is the namespace holding the bridge: "bedrock-<id>-hub".
	Hub string

	mu     sync.Mutex
	ports  []*Port
	locks  []net.Listener
	closed bool
}

// Port is a network namespace attached to a Switch.
type Port struct {
	// Index numbers the port from 1 in attach order.
	Index int
	// Netns is the namespace's name: "bedrock-<id>-<index>".
	Netns string
	// Dev is the namespace's interface on the segment ("eth0").
	Dev string
	// IP is the namespace's address on the segment (.<index+1>), which the host and every other
	// port reach directly.
	IP netip.Addr

	sw      *Switch
	hubLink string // the bridge port in the hub namespace: "p<index>"
}

const (
	bridgeName = "br"
	hubHostEnd = "host"
	portDev    = "eth0"
	// idLen is the length of a switch id in hex digits: "bedrock-" + 6 = 14 bytes, which fits an
	// interface name (15 bytes at most).
	idLen = 6
	// maxPorts: .2 to .254 of the /24.
	maxPorts = 253
)

// NewSwitch creates a segment: a hub namespace with a bridge, the host's interface on it with
// HostIP. Attach namespaces with Attach; Close removes it all.
func NewSwitch() (_ *Switch, err error) {
	s := &Switch{}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	for range 20 {
		id, err := randomID()
		if err != nil {
			return nil, err
		}
		if l, err := lock("id-" + id); err == nil {
			s.ID, s.locks = id, append(s.locks, l)
			break
		}
	}
	if s.ID == "" {
		return nil, errors.New("netns: no free switch id")
	}
	if s.Subnet, err = s.reserveSubnet(); err != nil {
		return nil, err
	}
	s.HostIP = s.Subnet.Addr().Next()
	s.HostLink = Prefix + s.ID
	s.Hub = Prefix + s.ID + "-hub"

	if err := Add(s.Hub); err != nil {
		return nil, err
	}
	if err := AddBridge(s.Hub, bridgeName); err != nil {
		return nil, err
	}
	if err := AddVeth(Host, s.HostLink, s.Hub, hubHostEnd); err != nil {
		return nil, err
	}
	if err := SetMaster(s.Hub, hubHostEnd, bridgeName); err != nil {
		return nil, err
	}
	if err := SetUp(s.Hub, hubHostEnd); err != nil {
		return nil, err
	}
	if err := AddAddr(Host, s.HostLink, cidr(s.HostIP, s.Subnet)); err != nil {
		return nil, err
	}
	if err := SetUp(Host, s.HostLink); err != nil {
		return nil, err
	}
	return s, nil
}

// Attach creates a new namespace on the segment, with its loopback up and Dev up with IP.
func (s *Switch) Attach() (p *Port, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("netns: switch closed")
	}
	if len(s.ports) >= maxPorts {
		return nil, fmt.Errorf("netns: switch full (%d ports)", maxPorts)
	}
	idx := len(s.ports) + 1
	ip := s.HostIP
	for range idx {
		ip = ip.Next()
	}
	p = &Port{Index: idx, Netns: fmt.Sprintf("%s%s-%d", Prefix, s.ID, idx), Dev: portDev, IP: ip,
		sw: s, hubLink: fmt.Sprintf("p%d", idx)}
	if err := Add(p.Netns); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = DeleteLink(s.Hub, p.hubLink)
			_ = Delete(p.Netns)
		}
	}()
	if err := AddVeth(s.Hub, p.hubLink, p.Netns, p.Dev); err != nil {
		return nil, err
	}
	if err := SetMaster(s.Hub, p.hubLink, bridgeName); err != nil {
		return nil, err
	}
	if err := SetUp(s.Hub, p.hubLink); err != nil {
		return nil, err
	}
	if err := AddAddr(p.Netns, p.Dev, cidr(p.IP, s.Subnet)); err != nil {
		return nil, err
	}
	if err := SetUp(p.Netns, p.Dev); err != nil {
		return nil, err
	}
	s.ports = append(s.ports, p)
	return p, nil
}

// Ports returns the attached namespaces in attach order.
func (s *Switch) Ports() []*Port {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Port(nil), s.ports...)
}

// Close deletes the host's link, every attached namespace and the hub, and frees the id and
// subnet. It is idempotent and tries every step even after a failure; the error joins the
// failures.
func (s *Switch) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.HostLink != "" {
		// explicitly, so the host's interface and route are gone when Close returns (a deleted
		// namespace is torn down asynchronously)
		errs = append(errs, DeleteLink(Host, s.HostLink))
	}
	for _, p := range s.ports {
		errs = append(errs, Delete(p.Netns))
	}
	if s.Hub != "" {
		errs = append(errs, Delete(s.Hub))
	}
	for _, l := range s.locks {
		_ = l.Close()
	}
	s.locks = nil
	return errors.Join(errs...)
}

// Cut isolates the namespace: its bridge port goes down, so it reaches neither the host nor the
// other ports and nobody reaches it (packets are dropped, connections time out rather than being
// refused). Its own interface stays up and keeps its address, as on a node whose uplink died.
// Idempotent.
func (p *Port) Cut() error { return SetDown(p.sw.Hub, p.hubLink) }

// Restore reconnects the namespace after Cut. Idempotent.
//
// It also forgets, in the host and in every attached namespace, the neighbours (ARP entries) still
// being resolved or given up on while the port was cut, so that traffic resumes at once rather than
// after the next ARP retry (up to a second later, or three after a failed resolution).
func (p *Port) Restore() error {
	if err := SetUp(p.sw.Hub, p.hubLink); err != nil {
		return err
	}
	errs := []error{FlushNeighbors(Host, p.sw.HostLink)}
	for _, q := range p.sw.Ports() {
		errs = append(errs, FlushNeighbors(q.Netns, q.Dev))
	}
	return errors.Join(errs...)
}

// Connected tells whether the namespace is connected (not Cut).
func (p *Port) Connected() (bool, error) { return IsUp(p.sw.Hub, p.hubLink) }

// Command returns a command that runs name with args inside the namespace; see Command.
func (p *Port) Command(name string, args ...string) *exec.Cmd {
	return Command(p.Netns, name, args...)
}

// CleanupStale removes the namespaces and host links of switches whose owner process is gone (a
// crashed or killed earlier run): names starting with Prefix and a switch id whose lock nobody
// holds. Switches of live processes are left alone. It returns the names removed.
func CleanupStale() ([]string, error) {
	nss, err := List()
	if err != nil {
		return nil, err
	}
	links, err := Links(Host)
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, n := range append(append([]string(nil), nss...), links...) {
		if id, ok := switchID(n); ok {
			ids[id] = true
		}
	}
	var removed []string
	var errs []error
	for id := range ids {
		l, err := lock("id-" + id)
		if err != nil {
			continue // a live switch
		}
		for _, n := range links {
			if n == Prefix+id {
				if err := DeleteLink(Host, n); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, n)
				}
			}
		}
		for _, n := range nss {
			if got, _ := switchID(n); got == id {
				if err := Delete(n); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, n)
				}
			}
		}
		_ = l.Close()
	}
	return removed, errors.Join(errs...)
}

// switchID extracts the switch id from a name "bedrock-<id>" or "bedrock-<id>-...".
func switchID(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return "", false
	}
	id, _, _ := strings.Cut(rest, "-")
	if len(id) != idLen {
		return "", false
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", false
	}
	return id, true
}

// lock takes a machine-wide lock named name for as long as the returned listener is open: an
// abstract unix socket, which the kernel releases when the process dies, however it dies.
func lock(name string) (net.Listener, error) {
	return net.Listen("unix", "@bedrock-netns-"+name)
}

func randomID() (string, error) {
	b := make([]byte, idLen/2)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// subnetPools are where segments are picked, in order of preference.
var subnetPools = []netip.Prefix{
	netip.MustParsePrefix("198.18.0.0/15"), // RFC 2544 benchmarking: meant for test networks
	netip.MustParsePrefix("10.0.0.0/8"),
}

// reserveSubnet picks a random /24 that no host route overlaps and that no other switch holds,
// and holds it until Close.
func (s *Switch) reserveSubnet() (netip.Prefix, error) {
	used, err := hostPrefixes()
	if err != nil {
		return netip.Prefix{}, err
	}
	const attempts = 64
	for i := range attempts {
		pool := subnetPools[min(i*len(subnetPools)/attempts, len(subnetPools)-1)]
		cand, err := randomSubnet(pool)
		if err != nil {
			return netip.Prefix{}, err
		}
		if overlapsAny(cand, used) {
			continue
		}
		l, err := lock("net-" + cand.String())
		if err != nil {
			continue // another switch holds it
		}
		s.locks = append(s.locks, l)
		return cand, nil
	}
	return netip.Prefix{}, fmt.Errorf("netns: no free /24 in %v after %d attempts", subnetPools, attempts)
}

func randomSubnet(pool netip.Prefix) (netip.Prefix, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<(24-pool.Bits())))
	if err != nil {
		return netip.Prefix{}, err
	}
	a := pool.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= uint32(n.Int64()) << 8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24), nil
}

func overlapsAny(p netip.Prefix, list []netip.Prefix) bool {
	for _, q := range list {
		if q.Bits() > 0 && q.Overlaps(p) {
			return true
		}
	}
	return false
}

// hostPrefixes returns the destinations of every IPv4 route of the host, in every table (the
// default routes excluded).
func hostPrefixes() ([]netip.Prefix, error) {
	out, err := ip(Host, "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return nil, fmt.Errorf("ip -j route: %w", err)
	}
	var ps []netip.Prefix
	for _, r := range routes {
		if r.Dst == "" || r.Dst == "default" {
			continue
		}
		if p, err := netip.ParsePrefix(r.Dst); err == nil {
			ps = append(ps, p.Masked())
		} else if a, err := netip.ParseAddr(r.Dst); err == nil && a.Is4() {
			ps = append(ps, netip.PrefixFrom(a, 32))
		}
	}
	return ps, nil
}

func cidr(a netip.Addr, subnet netip.Prefix) string {
	return netip.PrefixFrom(a, subnet.Bits()).String()
}

// Leftovers lists what of the switch is still on the host — namespaces named after its host
// link, and the host link itself — so that tests can prove that Close (or a test's cleanup)
// removed everything.
func (s *Switch) Leftovers() ([]string, error) {
	names, err := List()
	if err != nil {
		return nil, err
	}
	var left []string
	for _, n := range names {
		if strings.HasPrefix(n, s.HostLink+"-") {
			left = append(left, "namespace "+n)
		}
	}
	links, err := Links(Host)
	if err != nil {
		return nil, err
	}
	if slices.Contains(links, s.HostLink) {
		left = append(left, "host link "+s.HostLink)
	}
	return left, nil
}
