package replica

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// plan is what the initial sync asks of the master once the local tree's structure matches
// its manifest: the blocks that differ (requests, bytes in all) and the directories whose
// metadata is set once their files are written.
type plan struct {
	requests []wire.Request
	bytes    int64
	dirs     []*tree.Entry
}

// initialSync receives the manifest, brings the local tree in line, and
// requests exactly the blocks that differ.
func (s *session) initialSync(ctx context.Context, f wire.Frame) error {
	c := s.c
	s.bulk = true
	defer func() { s.bulk = false }()
	tStart := time.Now()
	var dec tree.ManifestDecoder
	for f.Type == wire.TManifestChunk {
		if err := dec.Add(f.Payload); err != nil {
			c.log.Error("rejecting manifest from master", "error", err)
			_ = s.send(wire.TError, 0, (&wire.ErrorMsg{Msg: "manifest rejected: " + err.Error()}).Marshal())
			return applyError{fmt.Errorf("manifest rejected: %w", err)}
		}
		var err error
		if f, err = s.read(wire.MaxPayload); err != nil {
			return err
		}
		if err := s.checkTerm(f); err != nil {
			return err
		}
	}
	if f.Type != wire.TManifestEnd {
		return fmt.Errorf("unexpected %s in manifest", f.Type)
	}
	snap := f.Seq
	tManifest := time.Now()
	master := dec.Entries
	if master == nil {
		master = map[string]*tree.Entry{}
	}
	c.log.Info("manifest received", "entries", len(master), "seq", snap)
	c.mu.Lock()
	prev := c.st.Position // what the copy holds now (never less than recorded)
	c.mu.Unlock()
	prevSynced := c.cfg.State.Get().Synced
	// From here the tree is changed toward the manifest: until the sync
	// completes it is a mix of two positions, not a copy anyone may be
	// promoted with, even after a crash. Say so durably first.
	if prevSynced {
		if err := c.cfg.State.Update(func(st *State) { st.Synced = false }); err != nil {
			return applyError{err}
		}
	}
	c.mu.Lock()
	c.st.Synced = false
	c.mu.Unlock()
	p, err := c.reconcileLocal(master, s.term, aside(prev, prevSynced, s.term, c.cfg.Base))
	if err != nil {
		return applyError{err}
	}
	tPlan := time.Now()
	c.mu.Lock()
	c.st.Progress = core.Progress{FilesTotal: int64(len(p.requests)), BytesTotal: p.bytes}
	c.st.Synced = false
	c.mu.Unlock()
	c.progress(true)
	sendErr := make(chan error, 1)
	go func() {
		for _, rq := range p.requests {
			s.wmu.Lock()
			err := s.seal.WriteFrame(s.w, wire.Frame{Type: wire.TRequest, Term: s.term, Seq: snap, Payload: rq.Marshal()})
			s.wmu.Unlock()
			if err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- s.send(wire.TRequestsDone, snap, nil)
	}()
	stopWriteback := c.ap.StartWriteback()
	defer stopWriteback()
	if err := s.receiveBulk(); err != nil {
		return err
	}
	if err := <-sendErr; err != nil {
		return err
	}
	stopWriteback()
	// Directory metadata last, children first: creating entries moved the
	// directories' mtimes.
	sort.Slice(p.dirs, func(i, j int) bool { return p.dirs[i].Path > p.dirs[j].Path })
	tFiles := time.Now()
	for _, d := range p.dirs {
		if err := c.ap.DirMeta(metaOf(d)); err != nil {
			return applyError{err}
		}
	}
	tData := time.Now()
	if err := c.ap.Sync(); err != nil {
		return applyError{err}
	}
	c.log.Debug("initial sync timings", "manifest", tManifest.Sub(tStart).String(), "reconcile", tPlan.Sub(tManifest).String(),
		"transfer", tFiles.Sub(tPlan).String(), "dirs", tData.Sub(tFiles).String(), "sync", time.Since(tData).String())
	pos := core.Position{Term: s.term, Seq: snap}
	// In a capture mode the copy is a mix of moments until the master cuts it over to the
	// journal (journal.go): it is synced from then on, not now.
	synced := !c.cfg.Capture
	if err := c.cfg.State.Update(func(st *State) {
		st.Position, st.Synced, st.Role = pos, synced, core.RoleClone
	}); err != nil {
		return applyError{err}
	}
	c.mu.Lock()
	c.st.Position, c.st.Synced = pos, synced
	c.recorded = pos
	c.st.MasterSeq = max(c.st.MasterSeq, snap)
	c.st.Progress.Done = true
	c.st.Progress.BytesDone = c.st.Progress.BytesTotal
	c.resumable = true
	c.mu.Unlock()
	c.progress(true)
	c.cfg.Metrics.Seq.Set(float64(snap))
	c.log.Info("initial sync complete", "seq", snap)
	return s.send(wire.TAck, snap, nil)
}

func (c *Clone) progress(force bool) {
	c.mu.Lock()
	p := c.st.Progress
	due := force || time.Since(c.lastProg) > time.Second
	if due {
		c.lastProg = time.Now()
	}
	c.mu.Unlock()
	c.cfg.Metrics.InitBytes.Set(float64(p.BytesDone))
	c.cfg.Metrics.InitBytesTot.Set(float64(p.BytesTotal))
	c.cfg.Metrics.InitFiles.Set(float64(p.FilesDone))
	c.cfg.Metrics.InitFilesTot.Set(float64(p.FilesTotal))
	if due && c.cfg.OnProgress != nil {
		c.cfg.OnProgress(p)
	}
}

// aside tells whether a complete copy at prev holds data that a master of term, started from
// base, does not: prev lies beyond base in base's own term (this copy was more advanced than
// the clone promoted instead of it). It returns the lost+found folder name for it, or "".
//
// Only the same-term case is decided here: a copy of a term older than base's would need the
// start of every term in between to be judged; those are a former master's case (below) or a
// copy that slept through a whole term, whose data is overwritten as before.
func aside(prev core.Position, synced bool, term uint64, base core.Position) string {
	if !synced || base == (core.Position{}) || prev.Term >= term || prev.Term != base.Term || prev.Seq <= base.Seq {
		return ""
	}
	return fmt.Sprintf("term%d-seq%d-beyond-seq%d", prev.Term, prev.Seq, base.Seq)
}

// reconcileLocal makes the local tree's structure match the manifest
// (moving divergent data aside first if this node was master in an older
// term, or holds positions beyond the master's start: beyond names the
// folder) and returns the block requests for file content.
func (c *Clone) reconcileLocal(master map[string]*tree.Entry, term uint64, beyond string) (*plan, error) {
	local := c.local
	st := c.cfg.State.Get()
	former := st.Role == core.RoleMaster && st.MasterTerm < term
	if former || beyond != "" {
		name := fmt.Sprintf("term%d", st.MasterTerm)
		if beyond != "" {
			name = beyond
		}
		dest := fmt.Sprintf("%s/%s-%s", tree.LostFound, name, time.Now().UTC().Format("20060102T150405.000Z"))
		moved := 0
		skip := "\x00" // descendants of what was just moved come right after it
		for _, l := range tree.Sorted(local) {
			if tree.Under(l.Path, skip) {
				continue
			}
			m := master[l.Path]
			diverged := m == nil || (m.Type != l.Type && m.Type != tree.TypeUnreadable) ||
				(l.Type == tree.TypeFile && m.Type == tree.TypeFile && !tree.SameContent(l, m)) ||
				(l.Type == tree.TypeSymlink && m.Target != l.Target)
			if !diverged || l.Type == tree.TypeUnreadable {
				continue
			}
			if err := c.ap.MoveAside(l.Path, dest+"/"+l.Path); err != nil {
				return nil, err
			}
			moved++
			skip = l.Path
			delete(local, l.Path)
		}
		if moved > 0 {
			what := "former master"
			if beyond != "" {
				what = "copy beyond the new master's start"
			}
			c.log.Warn(what+": divergent data moved aside", "entries", moved, "dir", dest)
		}
	}
	// Deletes, top level only. Entries below a deleted name are never looked
	// up again: the master has nothing below a name whose type it changed or
	// that it does not have.
	skip := "\x00"
	for _, l := range tree.Sorted(local) {
		if tree.Under(l.Path, skip) {
			continue
		}
		m := master[l.Path]
		if m != nil && (m.Type == l.Type || m.Type == tree.TypeUnreadable) {
			continue
		}
		if err := c.ap.Delete(l.Path); err != nil {
			return nil, err
		}
		skip = l.Path
		delete(local, l.Path)
	}
	p := &plan{}
	for _, m := range tree.Sorted(master) {
		l := local[m.Path]
		switch m.Type {
		case tree.TypeDir:
			if l == nil {
				// Its metadata comes at the end, with the others'.
				if err := c.ap.MkdirNew(metaOf(m)); err != nil {
					return nil, err
				}
			}
			p.dirs = append(p.dirs, m)
		case tree.TypeSymlink:
			if l == nil || l.Target != m.Target || !tree.SameMeta(l, m, c.cfg.Owners) {
				if err := c.ap.Symlink(wire.Symlink{Path: m.Path, Target: m.Target, MtimeNs: m.MtimeNs, UID: m.UID, GID: m.GID}); err != nil {
					return nil, err
				}
			}
		case tree.TypeFile:
			if l == nil || l.Type != tree.TypeFile {
				p.requests = append(p.requests, wire.Request{Path: m.Path, KnownBlocks: uint64(len(m.Hashes)), Whole: true})
				p.bytes += m.Size
				continue
			}
			rs := changedRanges(l.Hashes, m.Hashes)
			if len(rs) > 0 || l.Size != m.Size {
				p.requests = append(p.requests, wire.Request{Path: m.Path, KnownBlocks: uint64(len(m.Hashes)), Ranges: rs})
				for _, r := range rs {
					p.bytes += int64(r.Count) * tree.BlockSize
				}
				continue
			}
			if !tree.SameMeta(l, m, c.cfg.Owners) {
				if err := c.ap.SetMeta(metaOf(m)); err != nil {
					return nil, err
				}
			}
		}
	}
	return p, nil
}
