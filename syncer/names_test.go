package syncer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// oddNames are names Linux allows and apps do write.
var oddNames = []string{"back\\slash.txt", "caf\xe9-latin1.txt", "new\nline.txt", "tab\tand space .txt", "dir\\x/inner\xff.bin"}

// deepDir creates, below dir, a directory whose relative name is longer
// than PATH_MAX (reachable only by relative paths) holding one file, and
// returns the file's relative name.
func deepDir(t *testing.T, dir string) string {
	t.Helper()
	root, err := os.OpenRoot(dir)
	must(t, err)
	defer root.Close()
	comp := strings.Repeat("d", 250)
	name := comp
	must(t, root.Mkdir(name, 0o755))
	for len(name) < 4200 {
		name += "/" + comp
		must(t, root.Mkdir(name, 0o755))
	}
	f, err := root.Create(name + "/too-deep.txt")
	must(t, err)
	_, _ = f.WriteString("cannot be replicated")
	f.Close()
	return name + "/too-deep.txt"
}

// TestOddNamesReplicated: names with backslashes, invalid UTF-8, newlines
// are replicated, present at start and written live; a name that truly
// cannot be replicated (longer than PATH_MAX) is reported (metric, log)
// and everything else carries on.
func TestOddNamesReplicated(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	for _, n := range oddNames {
		writeFile(t, filepath.Join(mdir, "start", n), []byte("at start: "+n), 0o644)
	}
	deep := deepDir(t, mdir)
	writeFile(t, filepath.Join(mdir, "plain.txt"), []byte("plain"), 0o644)
	m := startSyncer(t, "master", mdir, procOpt{})
	c := startSyncer(t, "clone", cdir, procOpt{master: m.listen})
	has := func(rel, want string) bool {
		b, err := os.ReadFile(filepath.Join(cdir, rel))
		return err == nil && string(b) == want
	}
	waitFor(t, 20*time.Second, "names present at start replicated", func() bool {
		for _, n := range oddNames {
			if !has(filepath.Join("start", n), "at start: "+n) {
				return false
			}
		}
		return has("plain.txt", "plain")
	})
	for _, n := range oddNames {
		writeFile(t, filepath.Join(mdir, "live", n), []byte("live: "+n), 0o644)
	}
	writeFile(t, filepath.Join(mdir, "after.txt"), []byte("after"), 0o644)
	waitFor(t, 20*time.Second, "names written live replicated", func() bool {
		for _, n := range oddNames {
			if !has(filepath.Join("live", n), "live: "+n) {
				return false
			}
		}
		return has("after.txt", "after")
	})
	if m.metric("bedrock_sync_unreplicable_entries_total") < 1 {
		t.Fatal("the name longer than PATH_MAX was not counted")
	}
	if st := m.status(); st.Unreplicable < 1 || len(st.UnreplicableNames) == 0 {
		t.Fatalf("the master's status does not report the name it cannot replicate: %+v", st)
	}
	if !strings.Contains(m.logs.String(), "cannot replicate this name") {
		t.Fatal("the name longer than PATH_MAX was not logged")
	}
	if st := c.status(); !st.Healthy || st.Error != "" {
		t.Fatalf("clone unhealthy: %+v", st)
	}
	root, err := os.OpenRoot(cdir)
	must(t, err)
	defer root.Close()
	if _, err := root.Stat(deep); err == nil {
		t.Fatal("a name longer than PATH_MAX was replicated")
	}
}
