package driver

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// parseSignal checks a signal name as Nomad sends it ("SIGUSR1"; "USR1"
// is accepted too) and returns its number.
func parseSignal(name string) (int, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	sig := unix.SignalNum(n)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal %q", name)
	}
	return int(sig), nil
}
