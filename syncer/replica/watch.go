package replica

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// op is one replicated change. File ops name the blocks that changed; the
// sender reads them when it sends.
type op struct {
	seq    uint64
	at     time.Time
	kind   wire.Type // TFileBegin, TMkdir, TSymlink, TDelete, TRename, TMeta
	path   string
	to     string // rename target
	entry  *tree.Entry
	ranges []wire.Range
	known  uint64 // blocks the ranges refer to
	whole  bool
	// payload is a TJournal op's encoding (capture mode).
	payload []byte
}

// watchLoop detects changes: inotify events mark paths dirty; the dirty set
// is processed as soon as the loop is free, so a lone write goes out at once
// while a burst that arrives during processing is coalesced into the next
// pass. A periodic rescan and every inotify overflow compare the whole tree
// with the cache, so a missed event delays a change but never loses it.
func (m *Master) watchLoop(ctx context.Context) error {
	w, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return err
	}
	defer w.Close()
	m.watcher = w
	// The first scan fills the cache without producing ops: clones start
	// from a manifest anyway.
	first, err := m.watchAndScan(ctx, "")
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.cache = first
	m.mu.Unlock()
	close(m.ready)

	rescan := time.NewTicker(m.cfg.RescanInterval)
	defer rescan.Stop()
	dirty := make(map[string]struct{})
	// markWaiters wait for the marker event (watcherCaughtUp); marked says it came.
	var markWaiters []chan struct{}
	marked := false
	add := func(ev fsnotify.Event) {
		rel, ok := m.rel(ev.Name)
		if ok && rel == tree.StateDir && len(markWaiters) > 0 {
			marked = true
		}
		if !ok || rel == "" || tree.Excluded(rel) {
			return
		}
		dirty[rel] = struct{}{}
	}
	// deferred says changes are waiting in dirty because no clone needed them (watcherIdle);
	// rescanDue that an overflow or a rescan was skipped meanwhile.
	deferred, rescanDue := false, false
	for {
		var flushed chan struct{}
		select {
		case <-ctx.Done():
			return nil
		case <-m.stop:
			return nil
		case mw := <-m.markReq:
			markWaiters = append(markWaiters, mw)
			continue
		case <-m.watchKick:
			if !deferred && !rescanDue {
				continue
			}
		case flushed = <-m.flushReq:
			// The kernel queued the events of every write made before the request; give
			// the watcher's reader a moment to hand them over, then cut them below.
			time.Sleep(flushSettle)
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watcher closed")
			}
			add(ev)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("watcher closed")
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				m.cfg.Metrics.Overflows.Inc()
				m.log.Warn("inotify queue overflow, rescanning")
			} else {
				m.log.Warn("watch error, rescanning", "error", err)
			}
			clear(dirty)
			if m.watcherIdle() {
				rescanDue = true
				continue
			}
			m.fullRescan(ctx)
			m.fixRenamedWatches(ctx)
			continue
		case <-rescan.C:
			if m.watcherIdle() {
				continue // the journal carries every change; nobody needs the net
			}
			m.fullRescan(ctx)
			m.fixRenamedWatches(ctx)
			continue
		}
		// Drain whatever else is already queued, then process at once.
	drain:
		for {
			select {
			case ev := <-w.Events:
				add(ev)
			default:
				break drain
			}
		}
		if flushed == nil && !marked && m.watcherIdle() {
			deferred = len(dirty) > 0
			if len(dirty) > maxDeferred {
				clear(dirty)
				rescanDue = true
			}
			continue
		}
		if rescanDue {
			clear(dirty)
			m.fullRescan(ctx)
			rescanDue = false
		}
		m.processDirty(ctx, dirty)
		clear(dirty)
		deferred = false
		m.fixRenamedWatches(ctx)
		if flushed != nil {
			close(flushed)
		}
		if marked {
			for _, w := range markWaiters {
				close(w)
			}
			markWaiters, marked = nil, false
		}
	}
}

// maxDeferred bounds the paths the watch loop keeps while it is idle; past it, a full rescan
// replaces them when a clone needs the watcher's stream again.
const maxDeferred = 100000

// watcherIdle says whether the watcher's stream can wait: in a capture mode every change
// reaches the clones on the journal, and the watcher's operations (which re-read and hash
// every changed file: most of the master's work per write) serve only a clone that is
// joining. While every connected clone follows the journal, or none is connected, the watch
// loop only collects the changed paths; it cuts them into operations as soon as a clone
// connects (watchKick), and whenever a flush or a cut-over asks, so a joining clone's stream
// is the same as in watch mode, only its first operations come later.
func (m *Master) watcherIdle() bool {
	if !m.cfg.Capture {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.clones {
		if !c.journal {
			return false
		}
	}
	return true
}

// kickWatcher wakes the watch loop (see watcherIdle).
func (m *Master) kickWatcher() {
	select {
	case m.watchKick <- struct{}{}:
	default:
	}
}

// fixRenamedWatches re-registers the watches of renamed directories. An
// inotify watch follows its directory's inode, but the watcher keeps
// reporting events under the old name, which no longer exists: each
// directory below the new name is unwatched and watched again, and the
// subtree rescanned for whatever changed in between.
func (m *Master) fixRenamedWatches(ctx context.Context) {
	for len(m.renamedDirs) > 0 {
		pairs := m.renamedDirs
		m.renamedDirs = nil
		for _, pr := range pairs {
			from, to := pr[0], pr[1]
			m.mu.Lock()
			var dirs []string
			for k, e := range m.cache {
				if e.Type == tree.TypeDir && tree.Under(k, to) {
					dirs = append(dirs, k)
				}
			}
			m.mu.Unlock()
			for _, d := range dirs {
				if m.watcher != nil {
					_ = m.watcher.Remove(filepath.Join(m.cfg.Dir, from+d[len(to):]))
					_ = m.watcher.Remove(filepath.Join(m.cfg.Dir, d))
				}
			}
			m.unwatched(from)
			m.unwatched(to)
			sub, err := m.watchAndScan(ctx, to)
			if err != nil {
				m.log.Warn("rescan after rename failed", "path", to, "error", err)
				continue
			}
			m.reconcile(sub, []scope{{path: to, recursive: true}})
		}
	}
}

func (m *Master) rel(abs string) (string, bool) {
	r, err := filepath.Rel(m.cfg.Dir, abs)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", false
	}
	if r == "." {
		return "", true
	}
	return filepath.ToSlash(r), true
}

func (m *Master) addWatches(under string) {
	if m.watcher == nil {
		return
	}
	_ = fs.WalkDir(m.cfg.Root.FS(), dotIfEmpty(under), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil //nolint:nilerr // a vanished directory needs no watch; the rescan covers the rest
		}
		if !d.IsDir() {
			return nil
		}
		if p != "." && tree.Excluded(p) {
			return fs.SkipDir
		}
		if err := m.watcher.Add(filepath.Join(m.cfg.Dir, p)); err != nil {
			m.log.Warn("cannot watch directory", "dir", p, "error", err)
			return nil
		}
		if p == "." {
			p = ""
		}
		m.watched[p] = true
		return nil
	})
}

// unwatched forgets directories at or below p (they were removed; the
// kernel drops their watches).
func (m *Master) unwatched(p string) {
	for k := range m.watched {
		if tree.Under(k, p) {
			delete(m.watched, k)
		}
	}
}

// watchAndScan watches every directory below p, then scans p. A directory
// created after the watches were placed but before the scan would be seen
// by the scan yet never watched, so its later changes would be missed:
// such directories are watched and the subtree scanned again.
func (m *Master) watchAndScan(ctx context.Context, p string) (map[string]*tree.Entry, error) {
	var sub map[string]*tree.Entry
	for attempt := 0; attempt < 5; attempt++ {
		m.addWatches(p)
		var err error
		sub, err = tree.Scan(ctx, m.cfg.Root, tree.ScanOptions{Under: p, OnError: m.unreadable, OnSkip: m.unreplicable, Prev: m.cacheSnapshotMap()})
		if err != nil {
			return nil, err
		}
		missing := false
		for k, e := range sub {
			if e.Type == tree.TypeDir && !m.watched[k] {
				missing = true
				break
			}
		}
		if !missing {
			break
		}
	}
	return sub, nil
}

func dotIfEmpty(s string) string {
	if s == "" {
		return "."
	}
	return s
}

func (m *Master) fullRescan(ctx context.Context) {
	m.cfg.Metrics.Rescans.Inc()
	now, err := tree.Scan(ctx, m.cfg.Root, tree.ScanOptions{Prev: m.cacheSnapshotMap(), OnError: m.unreadable, OnSkip: m.unreplicable})
	if err != nil {
		m.log.Warn("rescan failed", "error", err)
		return
	}
	m.reconcile(now, []scope{{path: "", recursive: true}})
	// Directories the events missed are not watched either.
	for p, e := range now {
		if e.Type == tree.TypeDir && !m.watched[p] {
			m.addWatches(p)
		}
	}
}

func (m *Master) unreadable(name string, err error) {
	m.cfg.Metrics.Unreadable.Inc()
	m.log.Warn("cannot read, clones keep their copy", "path", name, "error", err)
}

// maxUnreplicableShown bounds the names Unreplicable returns (status, task event).
const maxUnreplicableShown = 3

// Unreplicable is how often the master met a name it cannot replicate, and the first few of
// them: what status and the task event show, beside the metric and the log.
func (m *Master) Unreplicable() (int, []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unreplicableCount, slices.Clone(m.unreplicableNames)
}

// unreplicable reports a name that cannot be replicated (see
// tree.ValidName): counted every time it is met, logged once per name (a
// rescan meets it again), and left out; everything else carries on.
func (m *Master) unreplicable(name string, err error) {
	m.cfg.Metrics.Unreplicable.Inc()
	m.mu.Lock()
	m.unreplicableCount++
	if len(m.unreplicableNames) < maxUnreplicableShown && !slices.Contains(m.unreplicableNames, name) {
		m.unreplicableNames = append(m.unreplicableNames, name)
	}
	m.mu.Unlock()
	if m.skipped == nil {
		m.skipped = make(map[string]bool)
	}
	if m.skipped[name] || len(m.skipped) >= maxSkippedLogged {
		return
	}
	m.skipped[name] = true
	m.log.Warn("cannot replicate this name; clones will not have it", "path", name, "error", err)
}

// maxSkippedLogged bounds the names remembered as already logged.
const maxSkippedLogged = 1000

type scope struct {
	path      string
	recursive bool
}

func (s scope) covers(p string) bool {
	if s.path == "" {
		return s.recursive || !strings.Contains(p, "/")
	}
	if s.recursive {
		return tree.Under(p, s.path)
	}
	return p == s.path
}

// processDirty looks at each dirty path (and its parent, whose mtime the
// change moved) and reconciles what it finds with the cache.
func (m *Master) processDirty(ctx context.Context, dirty map[string]struct{}) {
	paths := make([]string, 0, len(dirty)*2)
	seen := make(map[string]bool)
	for p := range dirty {
		for _, q := range []string{p, tree.Parent(p)} {
			if q != "" && !seen[q] {
				seen[q] = true
				paths = append(paths, q)
			}
		}
	}
	sort.Strings(paths)
	now := make(map[string]*tree.Entry)
	var scopes []scope
	m.mu.Lock()
	cached := make(map[string]*tree.Entry, len(paths))
	for _, p := range paths {
		cached[p] = m.cache[p]
	}
	m.mu.Unlock()
	for _, p := range paths {
		if err := tree.ValidName(p); err != nil {
			m.unreplicable(p, err)
			continue
		}
		old := cached[p]
		e, err := tree.Lstat(m.cfg.Root, p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			// A parent vanished or became a file: the parent's own entry
			// handles it; nothing to read here.
			e = nil
		}
		oldDir := old != nil && old.Type == tree.TypeDir
		switch {
		case e != nil && e.Type == tree.TypeDir && (!oldDir || old.Ino != e.Ino || !m.watched[p]):
			// Watch first, then scan: whatever is created after the watch
			// raises an event, whatever before it is seen by the scan.
			sub, err := m.watchAndScan(ctx, p)
			if err != nil {
				m.log.Warn("scan failed", "path", p, "error", err)
				continue
			}
			for k, v := range sub {
				now[k] = v
			}
			scopes = append(scopes, scope{path: p, recursive: true})
		case e == nil:
			scopes = append(scopes, scope{path: p, recursive: oldDir})
		default:
			if e.Type == tree.TypeFile {
				if old != nil && old.Type == tree.TypeFile && tree.Unchanged(old, e) {
					e.Hashes = old.Hashes
				} else if err := tree.HashEntry(m.cfg.Root, e, m.buf); err != nil {
					if errors.Is(err, fs.ErrNotExist) {
						scopes = append(scopes, scope{path: p, recursive: oldDir})
						continue
					}
					m.unreadable(p, err)
					e.Type, e.Hashes = tree.TypeUnreadable, nil
				}
			}
			now[p] = e
			scopes = append(scopes, scope{path: p, recursive: oldDir && e.Type != tree.TypeDir})
		}
	}
	m.reconcile(now, scopes)
}

// reconcile turns the difference between the cache (within scopes) and now
// into ops, in an order a clone can apply one by one: renames, deletes,
// creations and content (parents first), then directory metadata (children
// first, since creating a child moves its parent's mtime).
func (m *Master) reconcile(now map[string]*tree.Entry, scopes []scope) {
	m.mu.Lock()
	defer m.mu.Unlock()
	inScope := func(p string) bool {
		for _, s := range scopes {
			if s.covers(p) {
				return true
			}
		}
		return false
	}
	var ops []*op
	for round := 0; round < 3; round++ {
		var removed, added []*tree.Entry
		check := func(p string, old *tree.Entry) {
			if n := now[p]; n == nil || replaced(old, n) {
				removed = append(removed, old)
			}
		}
		// Only a recursive scope (a directory that appeared, vanished or
		// was replaced, or a full rescan) needs a pass over the whole
		// cache; a plain change looks at its own name, which keeps a single
		// write cheap in a tree of many files.
		recursive := false
		for _, s := range scopes {
			recursive = recursive || s.recursive
		}
		if recursive {
			for p, old := range m.cache {
				if inScope(p) {
					check(p, old)
				}
			}
		} else {
			for _, s := range scopes {
				if old := m.cache[s.path]; old != nil {
					check(s.path, old)
				}
			}
		}
		for p, n := range now {
			if old := m.cache[p]; old == nil || replaced(old, n) {
				added = append(added, n)
			}
		}
		// Renames: a top-level removed entry whose inode shows up as a
		// top-level added entry.
		byIno := make(map[[2]uint64]*tree.Entry)
		rmSet := make(map[string]bool, len(removed))
		for _, e := range removed {
			rmSet[e.Path] = true
		}
		for _, e := range removed {
			if e.Ino != 0 && !rmSet[tree.Parent(e.Path)] && e.Type != tree.TypeUnreadable {
				byIno[[2]uint64{e.Dev, e.Ino}] = e
			}
		}
		addSet := make(map[string]bool, len(added))
		for _, e := range added {
			addSet[e.Path] = true
		}
		sort.Slice(added, func(i, j int) bool { return added[i].Path < added[j].Path })
		renamed := false
		for _, e := range added {
			if addSet[tree.Parent(e.Path)] {
				continue
			}
			from := byIno[[2]uint64{e.Dev, e.Ino}]
			if from == nil || from.Type != e.Type || from.Path == e.Path || tree.Under(e.Path, from.Path) || tree.Under(from.Path, e.Path) {
				continue
			}
			delete(byIno, [2]uint64{e.Dev, e.Ino})
			ops = append(ops, &op{kind: wire.TRename, path: from.Path, to: e.Path})
			m.cacheRename(from.Path, e.Path)
			if e.Type == tree.TypeDir {
				m.renamedDirs = append(m.renamedDirs, [2]string{from.Path, e.Path})
			}
			renamed = true
		}
		if renamed {
			continue // diff again with renames applied
		}
		// Deletes, top-level only.
		sort.Slice(removed, func(i, j int) bool { return removed[i].Path < removed[j].Path })
		for _, e := range removed {
			if rmSet[tree.Parent(e.Path)] {
				continue
			}
			ops = append(ops, &op{kind: wire.TDelete, path: e.Path})
			m.cacheDelete(e.Path)
			m.unwatched(e.Path)
		}
		// Creations and changes, parents first.
		all := make([]*tree.Entry, 0, len(now))
		for _, e := range now {
			all = append(all, e)
		}
		sort.Slice(all, func(i, j int) bool { return all[i].Path < all[j].Path })
		var metas []*op
		for _, n := range all {
			old := m.cache[n.Path]
			if o := diffEntry(old, n, m.cfg.Owners); o != nil {
				if o.kind == wire.TMeta && n.Type == tree.TypeDir {
					metas = append(metas, o)
				} else {
					ops = append(ops, o)
				}
				if o.kind == wire.TMkdir {
					// Children created after it move its mtime on the
					// clone: set it again once they exist.
					metas = append(metas, &op{kind: wire.TMeta, path: n.Path, entry: n})
				}
			}
			m.cache[n.Path] = n
		}
		for i := len(metas) - 1; i >= 0; i-- {
			ops = append(ops, metas[i])
		}
		break
	}
	m.appendOps(ops)
}

// replaced says old and n are different objects under one name.
func replaced(old, n *tree.Entry) bool {
	if old.Type != n.Type {
		unreadable := old.Type == tree.TypeUnreadable && n.Type == tree.TypeFile || old.Type == tree.TypeFile && n.Type == tree.TypeUnreadable
		return !unreadable
	}
	return (old.Type == tree.TypeFile || old.Type == tree.TypeDir) && old.Ino != 0 && (old.Ino != n.Ino || old.Dev != n.Dev)
}

// diffEntry returns the op that brings a clone from old to n (nil if none).
func diffEntry(old, n *tree.Entry, owners bool) *op {
	switch n.Type {
	case tree.TypeUnreadable:
		return nil
	case tree.TypeDir:
		if old == nil || old.Type != tree.TypeDir {
			return &op{kind: wire.TMkdir, path: n.Path, entry: n}
		}
	case tree.TypeSymlink:
		if old == nil || old.Type != tree.TypeSymlink || old.Target != n.Target {
			return &op{kind: wire.TSymlink, path: n.Path, entry: n}
		}
	case tree.TypeFile:
		if old == nil || old.Type != tree.TypeFile || old.Hashes == nil {
			return &op{kind: wire.TFileBegin, path: n.Path, entry: n, whole: true, known: uint64(len(n.Hashes)),
				ranges: []wire.Range{{Start: 0, Count: uint64(len(n.Hashes))}}}
		}
		if rs := changedRanges(old.Hashes, n.Hashes); len(rs) > 0 || old.Size != n.Size {
			return &op{kind: wire.TFileBegin, path: n.Path, entry: n, known: uint64(len(n.Hashes)), ranges: rs}
		}
	}
	if old != nil && !tree.SameMeta(old, n, owners) {
		return &op{kind: wire.TMeta, path: n.Path, entry: n}
	}
	return nil
}

// changedRanges lists runs of blocks of n that differ from old.
func changedRanges(old, n []uint64) []wire.Range {
	var rs []wire.Range
	for i := 0; i < len(n); i++ {
		if i < len(old) && old[i] == n[i] {
			continue
		}
		if k := len(rs) - 1; k >= 0 && rs[k].Start+rs[k].Count == uint64(i) {
			rs[k].Count++
		} else {
			rs = append(rs, wire.Range{Start: uint64(i), Count: 1})
		}
	}
	return rs
}
