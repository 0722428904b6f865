package syncer

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/replica"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

func bigTree(t *testing.T, dir string, files, size int) {
	t.Helper()
	for i := 0; i < files; i++ {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("d%d/f%d.bin", i%3, i)), randBytes(size, byte(i)), 0o644)
	}
}

// midTransfer starts a master with 24 MiB of data and a clone that syncs it through a slow
// proxy, and returns once the clone's initial sync is under way.
func midTransfer(t *testing.T) (mdir, cdir string, m, c *proc) {
	t.Helper()
	mdir, cdir = t.TempDir(), t.TempDir()
	bigTree(t, mdir, 12, 2<<20)
	m = startSyncer(t, "master", mdir, procOpt{})
	px := startProxy(t, m.listen, 12<<20)
	c = startSyncer(t, "clone", cdir, procOpt{master: px.addr()})
	waitFor(t, 20*time.Second, "transfer under way", func() bool {
		p := c.status().Progress
		return p.BytesDone > 4<<20
	})
	return mdir, cdir, m, c
}

// TestKillCloneMidTransfer kills a clone with SIGKILL in the middle of its
// initial sync, damages a file it had written (as a crash in the middle of
// an in-place write would), and checks the restarted clone repairs itself.
func TestKillCloneMidTransfer(t *testing.T) {
	mdir, cdir, m, c := midTransfer(t)
	if c.status().Progress.Done {
		t.Fatal("transfer finished before the kill")
	}
	c.kill()
	// Damage one block of a file the clone already has.
	var damaged string
	_ = filepath.Walk(cdir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && damaged == "" && fi.Mode().IsRegular() && fi.Size() > 8192 && !strings.Contains(p, tree.StateDir) {
			damaged = p
		}
		return nil
	})
	if damaged != "" {
		f, err := os.OpenFile(damaged, os.O_RDWR, 0)
		must(t, err)
		_, err = f.WriteAt([]byte("crash garbage"), 5000)
		must(t, err)
		f.Close()
	}
	c2 := startSyncer(t, "clone-again", cdir, procOpt{master: m.listen})
	waitEqual(t, 60*time.Second, mdir, cdir)
	waitFor(t, 10*time.Second, "caught up", func() bool { return c2.status().CaughtUp })
}

// TestKillMasterMidTransfer kills the master with SIGKILL during a clone's
// initial sync; the clone keeps retrying and completes from the restarted
// master, changes made meanwhile included.
func TestKillMasterMidTransfer(t *testing.T) {
	mdir, cdir, m, c := midTransfer(t)
	m.kill()
	waitFor(t, 10*time.Second, "clone notices", func() bool { return !c.status().Healthy })
	writeFile(t, filepath.Join(mdir, "while-down.txt"), []byte("written while the master was down"), 0o644)
	m2 := startSyncer(t, "master-again", mdir, procOpt{listen: m.listen, term: 2})
	waitEqual(t, 60*time.Second, mdir, cdir)
	waitFor(t, 10*time.Second, "caught up", func() bool { return c.status().CaughtUp })
	writeFile(t, filepath.Join(mdir, "after.txt"), []byte("live again"), 0o644)
	waitEqual(t, 10*time.Second, mdir, cdir)
	if st := m2.status(); len(st.Clones) != 1 {
		t.Fatalf("master sees %d clones", len(st.Clones))
	}
}

// TestDiskFullClone fills a clone's filesystem: the clone turns unhealthy,
// the master and the other clone carry on, and the clone recovers once
// space returns.
func TestDiskFullClone(t *testing.T) {
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs for the disk-full test (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", small).Run() })
	mdir, okdir := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(mdir, "seed.txt"), []byte("seed"), 0o644)
	m := startSyncer(t, "master", mdir, procOpt{})
	full := startSyncer(t, "clone-small", small, procOpt{master: m.listen})
	ok := startSyncer(t, "clone-ok", okdir, procOpt{master: m.listen})
	waitEqual(t, 20*time.Second, mdir, small, okdir)

	writeFile(t, filepath.Join(mdir, "big.bin"), randBytes(3<<20, 7), 0o644)
	waitEqual(t, 20*time.Second, mdir, okdir)
	waitFor(t, 20*time.Second, "full clone unhealthy", func() bool {
		st := full.status()
		return !st.Healthy && strings.Contains(st.Error, "no space")
	})
	// The master is unaffected and keeps serving the healthy clone.
	writeFile(t, filepath.Join(mdir, "later.txt"), []byte("still replicating"), 0o644)
	waitEqual(t, 10*time.Second, mdir, okdir)
	if st := m.status(); st.Role != "master" || !st.Healthy {
		t.Fatalf("master affected: %+v", st)
	}
	if st := ok.status(); !st.Healthy || !st.CaughtUp {
		t.Fatalf("healthy clone affected: %+v", st)
	}
	// Space returns.
	if out, err := exec.Command("mount", "-o", "remount,size=16m", small).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	waitEqual(t, 30*time.Second, mdir, small)
	waitFor(t, 10*time.Second, "full clone healthy again", func() bool {
		st := full.status()
		return st.Healthy && st.CaughtUp
	})
}

// TestForgedPeerRejected: a clone with the wrong secret gets nothing, a
// master with the wrong secret is refused by the clone, and garbage or an
// oversized frame from an unauthenticated peer changes nothing.
func TestForgedPeerRejected(t *testing.T) {
	mdir, cdir, fdir := t.TempDir(), t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(mdir, "secret-data.txt"), []byte("for authenticated clones only"), 0o600)
	m := startSyncer(t, "master", mdir, procOpt{})
	forged := startSyncer(t, "forged-clone", cdir, procOpt{master: m.listen, secret: "wrong-secret-0123456789"})
	waitFor(t, 10*time.Second, "forged clone refused", func() bool {
		st := forged.status()
		return strings.Contains(st.Error, "authentication")
	})
	if _, err := os.Stat(filepath.Join(cdir, "secret-data.txt")); err == nil {
		t.Fatal("forged clone received data")
	}
	if m.metric("bedrock_sync_auth_failures_total") < 1 {
		t.Fatal("auth failure not counted")
	}

	// Unauthenticated garbage: a huge length and a bogus frame.
	for _, payload := range [][]byte{
		{0x7f, 0xff, 0xff, 0xff, 1, 2, 3},
		wire.AppendFrame(nil, wire.Frame{Type: wire.TRequest, Payload: (&wire.Request{Path: "secret-data.txt", Whole: true}).Marshal()}),
	} {
		conn, err := net.Dial("tcp", m.listen)
		must(t, err)
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = conn.Write(payload)
		r := bufio.NewReader(conn)
		var got []wire.Type
		for {
			f, _, err := wire.ReadFrame(r, wire.MaxPayload, nil)
			if err != nil {
				break
			}
			got = append(got, f.Type)
		}
		conn.Close()
		for _, ty := range got {
			if ty != wire.THello && ty != wire.TError {
				t.Fatalf("unauthenticated peer got a %s frame", ty)
			}
		}
	}

	// A forged master: speaks the protocol but does not know the secret.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			hello := wire.Hello{Version: wire.Version, Session: 1}
			helloF := wire.Frame{Type: wire.THello, Term: 1, Payload: hello.Marshal()}
			_ = wire.WriteFrame(conn, helloF)
			r := bufio.NewReader(conn)
			if f, _, err := wire.ReadFrame(r, wire.MaxAuthPayload, nil); err == nil {
				var a wire.Auth
				_ = a.Unmarshal(f.Payload)
				keys, _ := replica.HandshakeKeys([]byte("not-the-secret-at-all"), helloF, hello, f, a)
				ok := wire.AuthOK{MAC: keys.ServerMAC}
				_ = wire.WriteFrame(conn, wire.Frame{Type: wire.TAuthOK, Term: 1, Payload: ok.Marshal()})
				if seal, _, err := keys.Server(); err == nil {
					_ = seal.WriteFrame(conn, wire.Frame{Type: wire.TManifestEnd, Term: 1})
				}
			}
			time.Sleep(100 * time.Millisecond)
			conn.Close()
		}
	}()
	fc := startSyncer(t, "clone-of-forged", fdir, procOpt{master: ln.Addr().String()})
	waitFor(t, 10*time.Second, "forged master refused", func() bool {
		return strings.Contains(fc.status().Error, "does not know the secret")
	})
	if st := m.status(); st.Role != "master" {
		t.Fatalf("master disturbed: %+v", st)
	}
}

// fakeMaster authenticates properly (it has the secret) and then sends
// whatever frames the test wants: a compromised or buggy master.
func fakeMaster(t *testing.T, frames func(term uint64) []wire.Frame) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				p, err := replica.ServerHandshake(conn, []byte(testSecret), 7, 1, 0)
				if err != nil {
					return
				}
				if _, _, err := p.Open.ReadFrame(bufio.NewReader(conn), wire.MaxPayload, nil); err != nil {
					return
				}
				for _, fr := range frames(1) {
					_ = p.Seal.WriteFrame(conn, fr)
				}
				time.Sleep(500 * time.Millisecond)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestPathTraversalManifestRejected: a master that sends names escaping the
// data directory is refused and nothing is written outside it.
func TestPathTraversalManifestRejected(t *testing.T) {
	base := t.TempDir()
	cdir := filepath.Join(base, "data")
	must(t, os.MkdirAll(cdir, 0o755))
	for _, bad := range []string{"../escaped", "/tmp/abs-escaped", "ok/../../escaped", ".bedrock/state.json"} {
		t.Run(strings.ReplaceAll(bad, "/", "_"), func(t *testing.T) {
			addr := fakeMaster(t, func(term uint64) []wire.Frame {
				e := wire.Enc{}
				tree.AppendEntry(&e, &tree.Entry{Path: bad, Type: tree.TypeFile, Size: 4, Hashes: []uint64{1}})
				return []wire.Frame{
					{Type: wire.TManifestChunk, Term: term, Payload: e.B},
					{Type: wire.TManifestEnd, Term: term},
				}
			})
			c := startSyncer(t, "clone", cdir, procOpt{master: addr})
			waitFor(t, 10*time.Second, "manifest rejected", func() bool {
				return strings.Contains(c.status().Error, "manifest rejected")
			})
			c.kill()
		})
	}
	ents, _ := os.ReadDir(base)
	if len(ents) != 1 {
		t.Fatalf("something was written next to the data dir: %v", ents)
	}
	if _, err := os.Stat("/tmp/abs-escaped"); err == nil {
		t.Fatal("absolute path written")
	}
}

// TestFencing: a clone that has seen a newer term refuses an older master,
// and that master stops serving every clone as soon as it learns of it.
func TestFencing(t *testing.T) {
	mdir, adir, bdir := t.TempDir(), t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(mdir, "f.txt"), []byte("term 2 data"), 0o644)
	m := startSyncer(t, "master", mdir, procOpt{term: 2})
	a := startSyncer(t, "clone-a", adir, procOpt{master: m.listen, term: 2})
	waitEqual(t, 20*time.Second, mdir, adir)

	// Clone B remembers term 3 (it followed a newer master before).
	st, _ := json.Marshal(replica.State{Term: 3, Role: "clone"})
	writeFile(t, filepath.Join(bdir, tree.StateDir, "state.json"), st, 0o600)
	b := startSyncer(t, "clone-b", bdir, procOpt{master: m.listen, term: 3})
	waitFor(t, 10*time.Second, "clone B refuses the stale master", func() bool {
		return strings.Contains(b.status().Error, "stale term")
	})
	waitFor(t, 10*time.Second, "master fenced", func() bool { return m.status().Role == "fenced" })
	if _, err := os.Stat(filepath.Join(bdir, "f.txt")); err == nil {
		t.Fatal("clone B applied data from an older term")
	}
	// A fenced master replicates nothing more.
	writeFile(t, filepath.Join(mdir, "after-fence.txt"), []byte("must not travel"), 0o644)
	time.Sleep(time.Second)
	if _, err := os.Stat(filepath.Join(adir, "after-fence.txt")); err == nil {
		t.Fatal("fenced master still replicating")
	}
	waitFor(t, 10*time.Second, "clone A notices its master is fenced", func() bool { return !a.status().Healthy })
}

// TestFormerMasterLostFound: a master writes while its clone is away, dies,
// the clone becomes master of a newer term, and the old master comes back
// as a clone: its unreplicated writes are moved to lost+found, not deleted,
// and it then mirrors the new master.
func TestFormerMasterLostFound(t *testing.T) {
	odir, ndir := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(odir, "shared.txt"), []byte("v1"), 0o644)
	writeFile(t, filepath.Join(odir, "world/region.mca"), randBytes(64<<10, 3), 0o644)
	old := startSyncer(t, "old-master", odir, procOpt{term: 1})
	clone := startSyncer(t, "clone", ndir, procOpt{master: old.listen, term: 1})
	waitEqual(t, 20*time.Second, odir, ndir)
	waitFor(t, 5*time.Second, "acked", func() bool { return clone.status().CaughtUp })
	clone.kill()
	// Writes nobody acknowledged.
	writeFile(t, filepath.Join(odir, "unacked-new.txt"), []byte("only on the old master"), 0o644)
	writeFile(t, filepath.Join(odir, "shared.txt"), []byte("v2 from the old master"), 0o644)
	time.Sleep(200 * time.Millisecond)
	old.kill()

	// The clone is promoted in term 2 and writes on its own.
	nm := startSyncer(t, "new-master", ndir, procOpt{term: 2})
	writeFile(t, filepath.Join(ndir, "new-master.txt"), []byte("term 2"), 0o644)
	// The old master returns as a clone of term 2.
	back := startSyncer(t, "old-as-clone", odir, procOpt{master: nm.listen, term: 2})
	waitEqual(t, 20*time.Second, ndir, odir)
	waitFor(t, 5*time.Second, "caught up", func() bool { return back.status().CaughtUp })
	found := map[string]string{}
	_ = filepath.Walk(filepath.Join(odir, tree.LostFound), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			found[filepath.Base(p)] = string(b)
		}
		return nil
	})
	if found["unacked-new.txt"] != "only on the old master" || found["shared.txt"] != "v2 from the old master" {
		t.Fatalf("lost+found holds %v", found)
	}
	if _, ok := found["region.mca"]; ok {
		t.Fatal("unchanged data moved aside")
	}
}

// TestCorruptFrameReRequested flips one byte of the master->clone stream:
// the clone detects it, reconnects, and gets the data again.
func TestCorruptFrameReRequested(t *testing.T) {
	mdir, cdir := t.TempDir(), t.TempDir()
	bigTree(t, mdir, 3, 1<<20)
	m := startSyncer(t, "master", mdir, procOpt{})
	px := startProxy(t, m.listen, 0)
	px.corruptAt.Store(600 << 10)
	c := startSyncer(t, "clone", cdir, procOpt{master: px.addr()})
	waitEqual(t, 30*time.Second, mdir, cdir)
	if !px.corrupted.Load() {
		t.Fatal("proxy did not corrupt anything")
	}
	if !strings.Contains(c.logs.String(), "frame authentication failed") {
		t.Fatalf("corruption not reported in the clone's logs")
	}
	// Live stream corruption: the clone resumes from its position.
	px.corrupted.Store(false)
	px.corruptNext.Store(true)
	waitFor(t, 10*time.Second, "live stream corrupted", px.corrupted.Load)
	writeFile(t, filepath.Join(mdir, "live.bin"), randBytes(256<<10, 9), 0o644)
	waitEqual(t, 20*time.Second, mdir, cdir)
	waitFor(t, 10*time.Second, "clone resumed", func() bool {
		return strings.Contains(c.logs.String(), `"resumed"`)
	})
}
