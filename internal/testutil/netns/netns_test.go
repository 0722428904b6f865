package netns_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/netns"
)

// The test binary doubles as a helper run inside a namespace: with envHelper=listen it echoes TCP
// on envAddr; with envHelper=dial it dials envAddr and prints "ok" or the error.
const (
	envHelper = "BEDROCK_NETNS_TEST_HELPER"
	envAddr   = "BEDROCK_NETNS_TEST_ADDR"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envHelper) {
	case "listen":
		l, err := net.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("listening")
		for {
			conn, err := l.Accept()
			if err != nil {
				os.Exit(1)
			}
			go func() {
				defer func() { _ = conn.Close() }()
				_, _ = io.Copy(conn, conn)
			}()
		}
	case "dial":
		fmt.Println(dial(os.Getenv(envAddr)))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dial connects to addr, exchanges a line and returns "ok" or what went wrong.
func dial(addr string) string {
	conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err.Error()
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(conn, "ping"); err != nil {
		return err.Error()
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "ping\n" {
		return fmt.Sprintf("echo %q, %v", line, err)
	}
	return "ok"
}

func skipUnlessAvailable(t *testing.T) {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
}

// listenIn starts the echo helper inside namespace ns on addr, stopped at cleanup.
func listenIn(t *testing.T, ns, addr string) {
	t.Helper()
	cmd := netns.Command(ns, os.Args[0])
	cmd.Env = append(os.Environ(), envHelper+"=listen", envAddr+"="+addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "listening\n" {
		t.Fatalf("helper in %s: %q, %v", ns, line, err)
	}
}

// dialFrom dials addr from namespace ns (netns.Host: this process) and returns "ok" or the error.
func dialFrom(t *testing.T, ns, addr string) string {
	t.Helper()
	if ns == netns.Host {
		return dial(addr)
	}
	cmd := netns.Command(ns, os.Args[0])
	cmd.Env = append(os.Environ(), envHelper+"=dial", envAddr+"="+addr)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dial helper in %s: %v", ns, err)
	}
	return strings.TrimSpace(string(out))
}

func TestSwitch(t *testing.T) {
	skipUnlessAvailable(t)
	sw, err := netns.NewSwitch()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sw.Close() })
	if !sw.Subnet.Contains(sw.HostIP) || sw.Subnet.Bits() != 24 || len(sw.HostLink) > 15 {
		t.Fatalf("switch %+v", sw)
	}
	p1, err := sw.Attach()
	if err != nil {
		t.Fatal(err)
	}
	p2, err := sw.Attach()
	if err != nil {
		t.Fatal(err)
	}
	if p1.IP == p2.IP || !sw.Subnet.Contains(p1.IP) || !sw.Subnet.Contains(p2.IP) || p1.Netns == p2.Netns {
		t.Fatalf("ports %+v, %+v", p1, p2)
	}
	if got := sw.Ports(); len(got) != 2 {
		t.Fatalf("ports = %d", len(got))
	}

	// a listener in p1, on its segment address and on its own loopback
	a1 := net.JoinHostPort(p1.IP.String(), "7000")
	listenIn(t, p1.Netns, a1)
	listenIn(t, p1.Netns, "127.0.0.1:7000")
	// a listener of the host on the segment
	hl, err := net.Listen("tcp", net.JoinHostPort(sw.HostIP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hl.Close() })
	go func() {
		for {
			conn, err := hl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = conn.Close() }()
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
	hostAddr := hl.Addr().String()

	check := func(from, to, want string) {
		t.Helper()
		got := dialFrom(t, from, to)
		if (want == "ok") != (got == "ok") {
			t.Errorf("%q → %s: %s, want %s", from, to, got, want)
		}
	}
	check(netns.Host, a1, "ok")
	check(p2.Netns, a1, "ok")
	check(p1.Netns, hostAddr, "ok")
	check(p1.Netns, "127.0.0.1:7000", "ok")
	check(p2.Netns, "127.0.0.1:7000", "refused") // loopbacks are per namespace

	// nothing beyond the segment: no default route inside
	out, err := netns.Command(p1.Netns, "ip", "-4", "route", "show").Output()
	if err != nil || strings.Contains(string(out), "default") {
		t.Errorf("routes in %s: %s (%v)", p1.Netns, out, err)
	}

	// cut p1: nobody reaches it, it reaches nobody; p2 unaffected
	for range 2 { // idempotent
		if err := p1.Cut(); err != nil {
			t.Fatal(err)
		}
	}
	if up, err := p1.Connected(); err != nil || up {
		t.Fatalf("p1 connected = %v, %v after Cut", up, err)
	}
	check(netns.Host, a1, "fail")
	check(p2.Netns, a1, "fail")
	check(p1.Netns, hostAddr, "fail")
	check(p1.Netns, "127.0.0.1:7000", "ok") // its own loopback still works
	check(p2.Netns, hostAddr, "ok")

	for range 2 {
		if err := p1.Restore(); err != nil {
			t.Fatal(err)
		}
	}
	if up, err := p1.Connected(); err != nil || !up {
		t.Fatalf("p1 connected = %v, %v after Restore", up, err)
	}
	check(netns.Host, a1, "ok")
	check(p2.Netns, a1, "ok")
	check(p1.Netns, hostAddr, "ok")

	// Close removes everything, and again is fine
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, sw)
	if _, err := sw.Attach(); err == nil {
		t.Fatal("Attach after Close succeeded")
	}
}

func assertGone(t *testing.T, sw *netns.Switch) {
	t.Helper()
	left, err := sw.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range left {
		t.Errorf("%s left behind", l)
	}
}

func TestSwitchesDoNotShareSubnets(t *testing.T) {
	skipUnlessAvailable(t)
	seen := map[string]bool{}
	for range 4 {
		sw, err := netns.NewSwitch()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sw.Close() })
		if seen[sw.Subnet.String()] || seen[sw.ID] {
			t.Fatalf("subnet %s or id %s reused", sw.Subnet, sw.ID)
		}
		seen[sw.Subnet.String()], seen[sw.ID] = true, true
	}
}

// TestCleanupStale leaves a switch behind in a process that dies, then checks that CleanupStale
// removes it and leaves a live switch alone.
func TestCleanupStale(t *testing.T) {
	skipUnlessAvailable(t)
	live, err := netns.NewSwitch()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Close() })
	if _, err := live.Attach(); err != nil {
		t.Fatal(err)
	}

	// a child process builds a switch and is killed before it can close it
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaveSwitchBehind$", "-test.v")
	cmd.Env = append(os.Environ(), "BEDROCK_NETNS_TEST_LEAVE=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var hostLink string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if l, ok := strings.CutPrefix(sc.Text(), "switch "); ok {
			hostLink = l
			break
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if hostLink == "" {
		t.Fatal("the child did not build its switch")
	}
	links, _ := netns.Links(netns.Host)
	if !slices.Contains(links, hostLink) {
		t.Fatalf("the child's link %s is not there", hostLink)
	}

	removed, err := netns.CleanupStale()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %v", removed)
	for _, want := range []string{hostLink, hostLink + "-hub", hostLink + "-1"} {
		if !slices.Contains(removed, want) {
			t.Errorf("%s not removed", want)
		}
	}
	assertGone(t, &netns.Switch{HostLink: hostLink})
	for _, n := range removed {
		if strings.HasPrefix(n, live.HostLink) {
			t.Errorf("removed %s of a live switch", n)
		}
	}
	if !netns.Exists(live.Hub) || !netns.Exists(live.Ports()[0].Netns) {
		t.Error("the live switch's namespaces are gone")
	}
}

// TestLeaveSwitchBehind is TestCleanupStale's child: it builds a switch and waits to be killed.
func TestLeaveSwitchBehind(t *testing.T) {
	if os.Getenv("BEDROCK_NETNS_TEST_LEAVE") == "" {
		t.Skip("run by TestCleanupStale")
	}
	sw, err := netns.NewSwitch()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Attach(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("switch " + sw.HostLink)
	time.Sleep(time.Minute) // killed long before
}
