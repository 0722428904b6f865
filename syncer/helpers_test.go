package syncer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/internal/testutil"
)

const reexecEnv = "BEDROCK_SYNCER_TEST_MAIN"

const testSecret = "0123456789abcdef-test-secret"

// TestMain lets the test binary act as the syncer process: tests re-exec
// it, so kill -9 hits a real process.
func TestMain(m *testing.M) {
	if os.Getenv(reexecEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	metrics string
	listen  string
	dir     string
	logs    *testutil.Buffer
	done    chan struct{}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type procOpt struct {
	secret string
	term   uint64
	master string // clone of
	listen string // reuse an address (restarts)
	extra  []string
	nobody bool // run as uid/gid 65534 (binary copied where that user can run it)
}

// startSyncer starts a syncer process on dir. With o.master empty it is a
// master listening on a fresh loopback port.
func startSyncer(t *testing.T, name, dir string, o procOpt) *proc {
	t.Helper()
	if o.secret == "" {
		o.secret = testSecret
	}
	if o.term == 0 {
		o.term = 1
	}
	p := &proc{t: t, name: name, dir: dir, metrics: freeAddr(t), logs: &testutil.Buffer{}, done: make(chan struct{})}
	args := []string{"-data", dir, "-metrics", p.metrics, "-id", name, "-term", fmt.Sprint(o.term), "-log-level", "debug"}
	if o.master != "" {
		args = append(args, "-master", o.master)
	} else {
		p.listen = o.listen
		if p.listen == "" {
			p.listen = freeAddr(t)
		}
		args = append(args, "-listen", p.listen)
	}
	args = append(args, o.extra...)
	bin := os.Args[0]
	if o.nobody {
		bin = nobodyBinary(t)
	}
	cmd := exec.Command(bin, args...)
	if o.nobody {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	cmd.Env = append(os.Environ(), reexecEnv+"=1", "BEDROCK_SYNC_SECRET="+o.secret)
	cmd.Stdout = p.logs
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd = cmd
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if d := os.Getenv("BEDROCK_TEST_LOGDIR"); d != "" {
			_ = os.WriteFile(filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "_")+"-"+name+".log"), []byte(p.logs.String()), 0o644)
		}
		if t.Failed() {
			t.Logf("--- logs of %s ---\n%s", name, tail(p.logs.String(), 6000))
		}
	})
	p.waitUp()
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) waitUp() {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := p.tryStatus(); err == nil {
			return
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited: %s", p.name, p.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("%s did not come up", p.name)
}

func (p *proc) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

var httpc = &http.Client{Timeout: 2 * time.Second}

func (p *proc) tryStatus() (Status, error) {
	var st Status
	resp, err := httpc.Get("http://" + p.metrics + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

func (p *proc) status() Status {
	p.t.Helper()
	st, err := p.tryStatus()
	if err != nil {
		p.t.Fatalf("status of %s: %v", p.name, err)
	}
	return st
}

func (p *proc) metric(name string) float64 {
	p.t.Helper()
	resp, err := httpc.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	var sum float64
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			var v float64
			f := strings.Fields(line)
			fmt.Sscan(f[len(f)-1], &v)
			sum += v
		}
	}
	return sum
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// snapshot describes a tree for comparison: type, mode, content hash,
// symlink target and mtimes, excluding the syncer's own names.
func snapshot(dir string) (map[string]string, error) {
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		top := strings.Split(rel, string(filepath.Separator))[0]
		if top == ".bedrock" || top == "lost+found" {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v uid=%d gid=%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" size=%d sha=%x mtime=%d", len(b), sha256.Sum256(b), fi.ModTime().UnixNano())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.IsDir():
			desc += fmt.Sprintf(" mtime=%d", fi.ModTime().UnixNano())
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	return out, err
}

func diffTrees(a, b string) string {
	sa, err := snapshot(a)
	if err != nil {
		return err.Error()
	}
	sb, err := snapshot(b)
	if err != nil {
		return err.Error()
	}
	var diffs []string
	for k, v := range sa {
		if sb[k] != v {
			diffs = append(diffs, fmt.Sprintf("%s: %q vs %q", k, v, sb[k]))
		}
	}
	for k, v := range sb {
		if _, ok := sa[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing vs %q", k, v))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("... %d more", len(diffs)-10))
	}
	return strings.Join(diffs, "\n")
}

func waitEqual(t *testing.T, timeout time.Duration, a string, bs ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var d string
		for _, b := range bs {
			if d = diffTrees(a, b); d != "" {
				break
			}
		}
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("trees differ after %v:\n%s", timeout, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path string, data []byte, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func randBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

var nobodyBin struct {
	sync.Mutex
	path string
}

// nobodyBinary copies the test binary to a directory an unprivileged user
// can enter (removed when the test ends).
func nobodyBinary(t *testing.T) string {
	t.Helper()
	nobodyBin.Lock()
	defer nobodyBin.Unlock()
	if nobodyBin.path != "" {
		return nobodyBin.path
	}
	dir, err := os.MkdirTemp("", "syncer-nobody-")
	must(t, err)
	must(t, os.Chmod(dir, 0o755))
	b, err := os.ReadFile(os.Args[0])
	must(t, err)
	p := filepath.Join(dir, "syncer.test")
	must(t, os.WriteFile(p, b, 0o755))
	nobodyBin.path = p
	t.Cleanup(func() {
		nobodyBin.Lock()
		defer nobodyBin.Unlock()
		os.RemoveAll(dir)
		nobodyBin.path = ""
	})
	return p
}
