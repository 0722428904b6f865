package replica

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
)

// A clone more advanced than the clone promoted instead of it (it lost the race, or was dead
// when the lock was taken) holds writes the new master never had: they go to lost+found,
// named after the term and positions, never overwritten. Here the clone followed term 1 to
// 1/N with a file the term-2 master (promoted from 1/1, before that file) lacks.
func TestCloneBeyondTheNewMastersStartMovesAside(t *testing.T) {
	m1dir, m2dir, cdir := t.TempDir(), t.TempDir(), t.TempDir()
	writeTestFile(t, filepath.Join(m1dir, "common"), "both have it")
	writeTestFile(t, filepath.Join(m2dir, "common"), "both have it")
	ctx1, cancel1 := context.WithTimeout(context.Background(), 30*time.Second)
	m1, c1, _, wait1 := pair(ctx1, t, m1dir, cdir)
	start := m1.Position() // where the less advanced clone (m2dir) was promoted from
	writeTestFile(t, filepath.Join(m1dir, "late"), "acknowledged by this clone only")
	waitUntil(t, 10*time.Second, "the late write replicated", func() bool {
		// the watcher may send the create before the content: wait for the content itself
		b, err := os.ReadFile(filepath.Join(cdir, "late"))
		return err == nil && string(b) == "acknowledged by this clone only" &&
			c1.Status().Position.Seq > start.Seq && c1.Status().CaughtUp
	})
	held := c1.Status().Position
	cancel1()
	wait1()

	// term 2: the master started from start; the clone learns it from the lock key (Base)
	mroot, err := os.OpenRoot(m2dir)
	if err != nil {
		t.Fatal(err)
	}
	defer mroot.Close()
	croot, err := os.OpenRoot(cdir)
	if err != nil {
		t.Fatal(err)
	}
	defer croot.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	secret := []byte("0123456789abcdef0123456789abcdef")
	m2 := NewMaster(MasterConfig{Dir: m2dir, Root: mroot, Term: 2, Listener: ln, Secret: secret})
	mdone := make(chan error, 1)
	go func() { mdone <- m2.Run(ctx) }()
	st, err := OpenState(croot)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClone(CloneConfig{Root: croot, MasterAddr: ln.Addr().String(), Secret: secret, ID: "c", State: st, Base: start})
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(ctx) }()
	waitUntil(t, 10*time.Second, "synced with term 2", func() bool { return c.Status().CaughtUp && c.Status().Position.Term == 2 })
	cancel()
	<-mdone
	<-cdone

	if _, err := os.Stat(filepath.Join(cdir, "late")); err == nil {
		t.Fatal("the clone still has the file the new master lacks")
	}
	var found []string
	_ = filepath.Walk(filepath.Join(cdir, tree.LostFound), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			found = append(found, p)
		}
		return nil
	})
	if len(found) != 1 || filepath.Base(found[0]) != "late" {
		t.Fatalf("lost+found holds %v, want the late file", found)
	}
	b, _ := os.ReadFile(found[0])
	want := "term1-seq" + itoa(held.Seq) + "-beyond-seq" + itoa(start.Seq)
	if string(b) != "acknowledged by this clone only" || !strings.Contains(found[0], want) {
		t.Fatalf("lost+found: %s (%q), want it under %s-…", found[0], b, want)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func writeTestFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestAsideOnlyBeyondTheStartOfTheSameTerm(t *testing.T) {
	for _, tc := range []struct {
		prev, base core.Position
		synced     bool
		term       uint64
		want       bool
	}{
		{pos(3, 505), pos(3, 500), true, 4, true},      // lost the race by 5 ops
		{pos(3, 500), pos(3, 500), true, 4, false},     // exactly the start
		{pos(3, 400), pos(3, 500), true, 4, false},     // merely behind: overwrite
		{pos(4, 9), pos(3, 500), true, 4, false},       // this master's own term: resume
		{pos(3, 505), pos(3, 500), false, 4, false},    // a partial copy holds nothing whole
		{pos(3, 505), core.Position{}, true, 4, false}, // start unknown (static roles)
	} {
		if got := aside(tc.prev, tc.synced, tc.term, tc.base) != ""; got != tc.want {
			t.Errorf("aside(%+v, synced %v, term %d, base %+v) = %v, want %v", tc.prev, tc.synced, tc.term, tc.base, got, tc.want)
		}
	}
}

func pos(term, seq uint64) core.Position { return core.Position{Term: term, Seq: seq} }
