// Package testutil holds what tests of every layer share to reach real prerequisites (a
// Consul agent, a Docker engine): one rule for a prerequisite that is missing, so that a
// developer's `go test` skips what it cannot run while CI, which must run everything, fails.
//
// Its subpackages are the real things: consul (Consul test agents), netns (network namespaces
// for partitions) and testimage (the local test app image).
package testutil

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil/consul"
)

// CI tells whether the tests run in CI (CI=true, as CI services set it): there a missing
// prerequisite is a failure, not a skip.
func CI() bool {
	v := os.Getenv("CI")
	ci, err := strconv.ParseBool(v)
	return v != "" && (err != nil || ci) // any value but a false one
}

// Missing ends a test whose prerequisite is missing: skipped on a developer's machine, failed
// with CI=true, where a skipped test would hide that nothing was tested.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if CI() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// RequireConsul returns the Consul agent binary the test's agents run (see consul.Binary),
// or ends the test through Missing when there is none. With -short the test is skipped: a
// Consul agent takes seconds to start.
func RequireConsul(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a Consul agent (skipped with -short)")
	}
	bin, err := consul.Binary()
	if err != nil {
		Missing(t, "needs a Consul agent: %v", err)
	}
	return bin
}

// WaitFor polls ok (every few milliseconds) until it holds, and fails the test when it does
// not within d.
func WaitFor(t testing.TB, d time.Duration, ok func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !ok() {
		if time.Now().After(end) {
			t.Fatal("condition not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
