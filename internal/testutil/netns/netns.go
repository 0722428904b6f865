// Package netns builds small private networks out of Linux network namespaces for Bedrock's
// end-to-end tests, so that a test can cut one node off the others without touching the host's
// real interfaces, routes or firewall.
//
// The low-level helpers (Add, Delete, AddVeth, AddAddr, SetUp, SetDown, Command, ...) run the
// iproute2 `ip` command; every call is bounded by a timeout. Switch builds on them: a private
// layer-2 segment with one port in the host namespace and one namespace per attached node; see
// NewSwitch.
//
// Every name this package creates starts with Prefix. A namespace or host link of ours left over by
// a crashed run is removed by CleanupStale, and only when no live process still owns it.
//
// Linux only, and root (CAP_NET_ADMIN and CAP_SYS_ADMIN) is needed; Available says why not.
package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Prefix starts the name of every namespace and host link this package creates.
const Prefix = "bedrock-"

// cmdTimeout bounds each `ip` invocation.
const cmdTimeout = 10 * time.Second

// Host names the current (host) network namespace in the helpers below.
const Host = ""

// Available returns nil when this process can create network namespaces and veth pairs: it runs as
// root, `ip` is on PATH and `ip netns` works. Otherwise the error says what is missing, fit for
// t.Skip.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root (euid 0)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("iproute2's ip command not found: %w", err)
	}
	if _, err := ip(Host, "netns", "list"); err != nil {
		return fmt.Errorf("ip netns unavailable: %w", err)
	}
	return nil
}

// ip runs `ip [-n ns] args...`, bounded by cmdTimeout, and returns its standard output.
func ip(ns string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if ns != Host {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Add creates the network namespace name (`ip netns add`) and brings its loopback up.
func Add(name string) error {
	if _, err := ip(Host, "netns", "add", name); err != nil {
		return err
	}
	return SetUp(name, "lo")
}

// Delete removes the network namespace name (`ip netns delete`). A namespace that does not exist
// is not an error. The kernel frees the namespace, and the veth ends inside it, once no process
// uses it any more, a moment after this returns.
func Delete(name string) error {
	if _, err := ip(Host, "netns", "delete", name); err != nil {
		if !Exists(name) {
			return nil
		}
		return err
	}
	return nil
}

// Exists tells whether the named network namespace exists.
func Exists(name string) bool {
	names, err := List()
	return err == nil && slices.Contains(names, name)
}

// List returns the names of the named network namespaces (`ip netns list`).
func List() ([]string, error) {
	out, err := ip(Host, "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		// "name" or "name (id: 3)"
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// Links returns the names of the network interfaces in namespace ns (Host for the host's).
func Links(ns string) ([]string, error) {
	out, err := ip(ns, "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		IfName string `json:"ifname"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("ip -j link show: %w", err)
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.IfName)
	}
	return names, nil
}

// AddVeth creates a veth pair: link name in namespace ns and its peer named peer in namespace
// peerNS (ns and peerNS may be Host). Interface names are at most 15 bytes.
func AddVeth(ns, name, peerNS, peer string) error {
	args := []string{"link", "add", "name", name, "type", "veth", "peer", "name", peer}
	if peerNS != ns {
		if peerNS == Host {
			return errors.New("netns: create the veth pair from the host side (ns = Host) instead")
		}
		args = append(args, "netns", peerNS)
	}
	_, err := ip(ns, args...)
	return err
}

// AddBridge creates a bridge named name in namespace ns and brings it up.
func AddBridge(ns, name string) error {
	if _, err := ip(ns, "link", "add", "name", name, "type", "bridge"); err != nil {
		return err
	}
	return SetUp(ns, name)
}

// SetMaster enslaves link dev of namespace ns to the bridge br of the same namespace.
func SetMaster(ns, dev, br string) error {
	_, err := ip(ns, "link", "set", "dev", dev, "master", br)
	return err
}

// DeleteLink deletes link dev of namespace ns (both ends of a veth pair go). A link that does not
// exist is not an error.
func DeleteLink(ns, dev string) error {
	if _, err := ip(ns, "link", "delete", "dev", dev); err != nil {
		if names, lerr := Links(ns); lerr == nil && !slices.Contains(names, dev) {
			return nil
		}
		return err
	}
	return nil
}

// AddAddr assigns the address in CIDR notation (e.g. "10.1.2.3/24") to link dev of namespace ns.
func AddAddr(ns, dev, cidr string) error {
	_, err := ip(ns, "addr", "add", cidr, "dev", dev)
	return err
}

// SetUp brings link dev of namespace ns up (administratively). Already up is fine.
func SetUp(ns, dev string) error {
	_, err := ip(ns, "link", "set", "dev", dev, "up")
	return err
}

// SetDown brings link dev of namespace ns down (administratively). Already down is fine. For one
// end of a veth pair, the other end loses its carrier: nothing passes either way.
func SetDown(ns, dev string) error {
	_, err := ip(ns, "link", "set", "dev", dev, "down")
	return err
}

// FlushNeighbors forgets the dynamic neighbour (ARP) entries of link dev of namespace ns
// (`ip neigh flush dev`), so that the next packet to each neighbour resolves it afresh.
func FlushNeighbors(ns, dev string) error {
	_, err := ip(ns, "neigh", "flush", "dev", dev)
	return err
}

// IsUp tells whether link dev of namespace ns is administratively up.
func IsUp(ns, dev string) (bool, error) {
	out, err := ip(ns, "-j", "link", "show", "dev", dev)
	if err != nil {
		return false, err
	}
	var links []struct {
		Flags []string `json:"flags"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return false, fmt.Errorf("ip -j link show dev %s: %w", dev, err)
	}
	if len(links) != 1 {
		return false, fmt.Errorf("ip -j link show dev %s: unexpected output %q", dev, out)
	}
	return slices.Contains(links[0].Flags, "UP"), nil
}

// Command returns a command that runs name with args inside network namespace ns through
// `ip netns exec` (which execs it: the process's pid is the command's own). Only the network
// namespace (and /sys, remounted) differ from the caller's: same files, same user.
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// CommandContext is Command bound to ctx (see exec.CommandContext).
func CommandContext(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
