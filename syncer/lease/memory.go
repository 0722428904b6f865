package lease

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// Memory is an in-memory election group: one lock key, the high-water key and the candidacies
// of several instances, each joined through its own Leaser. It follows the Consul rules the
// election relies on — a lock lost by invalidating its session stays refused for the
// lock-delay, a released one does not; a candidacy is live while its session lives; the
// acquisition checks the promotion rule atomically and writes the mark; only the holder can
// mark — so that the election logic can be tested, interleaving by interleaving, without a
// Consul agent. Sessions never expire by themselves: tests end them with Invalidate or Kill.
type Memory struct {
	timing Timing

	mu       sync.Mutex
	term     uint64 // the lock's LockIndex
	holder   string // session holding the lock ("" when free)
	info     Info   // the lock key's value
	index    uint64 // bumped at every change of the lock key
	delayTil time.Time
	hw       HighWater
	cands    map[string]memCandidacy
	members  map[string]*MemoryLeaser
	watchers map[chan Holder]struct{}
	gen      int
}

type memCandidacy struct {
	info    Info
	session string
}

// NewMemory returns an empty group with timing t (zero fields take the defaults).
func NewMemory(t Timing) *Memory {
	return &Memory{timing: t.withDefaults(), cands: map[string]memCandidacy{}, members: map[string]*MemoryLeaser{},
		watchers: map[chan Holder]struct{}{}}
}

// Join returns the Leaser of instance id, with a new session. A second Join of the same id
// replaces the first (a restarted process).
func (m *Memory) Join(id string) *MemoryLeaser {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.members[id]; old != nil && !old.closed {
		m.endSessionLocked(old, true)
		m.closeLocked(old)
	}
	l := &MemoryLeaser{m: m, id: id}
	m.newSessionLocked(l)
	m.members[id] = l
	return l
}

// Invalidate ends instance id's session as Consul does when its TTL runs out or a linked check
// fails: its lease is lost, the lock stays refused for the lock-delay and its candidacy stops
// counting as live. The instance itself lives on: its Leaser creates a new session and
// republishes its candidacy, as the Consul Leaser does.
func (m *Memory) Invalidate(id string) {
	m.invalidate(id, func(l *MemoryLeaser) {
		m.newSessionLocked(l)
		if c, ok := m.cands[id]; ok {
			c.session = l.session
			m.cands[id] = c
		}
	})
}

// Kill is the death of instance id's process: its session is invalidated (lock-delay) and
// its Leaser is closed.
func (m *Memory) Kill(id string) {
	m.invalidate(id, m.closeLocked)
}

// invalidate ends the session of a live instance id (lock-delay) and then, under the same
// lock, does what follows to the instance: a new session, or its end.
func (m *Memory) invalidate(id string, then func(*MemoryLeaser)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.members[id]
	if l == nil || l.closed {
		return
	}
	m.endSessionLocked(l, true)
	then(l)
}

// closeLocked marks l closed and closes its watches.
func (m *Memory) closeLocked(l *MemoryLeaser) {
	l.closed = true
	for _, ch := range l.chans {
		if _, ok := m.watchers[ch]; ok {
			delete(m.watchers, ch)
			close(ch)
		}
	}
	l.chans = nil
}

func (m *Memory) newSessionLocked(l *MemoryLeaser) {
	m.gen++
	l.session = fmt.Sprintf("%s#%d", l.id, m.gen)
}

// endSessionLocked ends l's current session: the lock it holds is freed (with lock-delay when
// invalidated), its lease is lost, its candidacy is no longer live.
func (m *Memory) endSessionLocked(l *MemoryLeaser, invalidated bool) {
	if m.holder == l.session {
		m.holder = ""
		m.index++
		if invalidated {
			m.delayTil = time.Now().Add(m.timing.LockDelay)
		}
		m.notifyLocked()
	}
	if l.lease != nil {
		l.lease.lose(fmt.Errorf("%w: session %s ended", ErrLost, l.session))
		l.lease = nil
	}
	if c, ok := m.cands[l.id]; ok && c.session == l.session {
		c.session = ""
		m.cands[l.id] = c
	}
	l.session = ""
}

func (m *Memory) holderLocked() Holder {
	h := Holder{Held: m.holder != "", Term: m.term, Session: m.holder, Info: m.info, Index: m.index}
	return h
}

func (m *Memory) notifyLocked() {
	h := m.holderLocked()
	for ch := range m.watchers {
		sendLatest(ch, h)
	}
}

// MemoryLeaser is one instance's Leaser on a Memory group.
type MemoryLeaser struct {
	m       *Memory
	id      string
	session string        // guarded by m.mu
	lease   *memoryLease  // guarded by m.mu
	closed  bool          // guarded by m.mu
	chans   []chan Holder // guarded by m.mu
}

var _ Leaser = (*MemoryLeaser)(nil)

// Acquire takes the lock if it is free, its lock-delay is over and info qualifies against the
// high-water mark (Qualifies); it then raises the mark to info's position.
func (l *MemoryLeaser) Acquire(_ context.Context, info Info) (Lease, error) {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case l.closed:
		return nil, ErrClosed
	case l.lease != nil:
		return nil, errors.New("lease: already holding the lock")
	case m.holder != "":
		return nil, fmt.Errorf("lease: %w (session %s, term %d)", ErrHeld, m.holder, m.term)
	case time.Now().Before(m.delayTil):
		return nil, fmt.Errorf("lease: %w: failed to lock key due to lock delay", ErrHeld)
	}
	if why := Qualifies(info, m.term > 0, m.hw); why != "" {
		return nil, fmt.Errorf("lease: %w: %s", ErrBehind, why)
	}
	m.term++
	info.Term = m.term
	m.holder, m.info = l.session, info
	m.index++
	m.hw = HighWater{Term: m.term, Position: info.Position, ID: l.id}
	ls := &memoryLease{l: l, session: l.session, term: m.term, deadline: time.Now().Add(m.timing.Validity()),
		marked: info.Position, done: make(chan struct{})}
	l.lease = ls
	m.notifyLocked()
	return ls, nil
}

// Watch sends the lock key's state now and after every change.
func (l *MemoryLeaser) Watch(ctx context.Context) <-chan Holder {
	m := l.m
	ch := make(chan Holder, 1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if l.closed {
		close(ch)
		return ch
	}
	m.watchers[ch] = struct{}{}
	l.chans = append(l.chans, ch)
	ch <- m.holderLocked()
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.watchers[ch]; ok {
			delete(m.watchers, ch)
			close(ch)
		}
	})
	return ch
}

// Publish writes this instance's candidacy, live with its session.
func (l *MemoryLeaser) Publish(_ context.Context, info Info) error {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	info.ID = l.id
	m.cands[l.id] = memCandidacy{info: info, session: l.session}
	return nil
}

// Withdraw deletes this instance's candidacy.
func (l *MemoryLeaser) Withdraw(context.Context) error {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cands, l.id)
	return nil
}

// Candidates lists the candidacies, ordered by id.
func (l *MemoryLeaser) Candidates(context.Context) ([]Candidate, error) {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Candidate, 0, len(m.cands))
	for _, c := range m.cands {
		out = append(out, Candidate{Info: c.info, Live: c.session != ""})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// HighWater returns the group's high-water mark.
func (l *MemoryLeaser) HighWater(context.Context) (HighWater, error) {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	return l.m.hw, nil
}

// Timing returns the group's timing.
func (l *MemoryLeaser) Timing() Timing { return l.m.timing }

// Close withdraws the candidacy, releases the lock without lock-delay and ends the session;
// the Leaser's watches close.
func (l *MemoryLeaser) Close(context.Context) error {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if l.closed {
		return nil
	}
	delete(m.cands, l.id)
	m.endSessionLocked(l, false)
	m.closeLocked(l)
	return nil
}

// memoryLease is a lock held in a Memory group.
type memoryLease struct {
	l        *MemoryLeaser
	session  string
	term     uint64
	deadline time.Time
	marked   core.Position
	done     chan struct{}
	err      error // guarded by the group's mu
}

func (s *memoryLease) Term() uint64              { return s.term }
func (s *memoryLease) Deadline() time.Time       { return s.deadline }
func (s *memoryLease) Renewed() <-chan time.Time { return nil }
func (s *memoryLease) Done() <-chan struct{}     { return s.done }

func (s *memoryLease) Err() error {
	s.l.m.mu.Lock()
	defer s.l.m.mu.Unlock()
	return s.err
}

// lose ends the lease (group's mu held).
func (s *memoryLease) lose(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	s.deadline = time.Now()
	close(s.done)
}

// Update rewrites the lock key's value while held.
func (s *memoryLease) Update(_ context.Context, info Info) error {
	m := s.l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	info.Term = s.term
	m.info = info
	m.index++
	m.notifyLocked()
	return nil
}

// Mark raises the high-water mark while the lock is held by this lease's session.
func (s *memoryLease) Mark(_ context.Context, pos core.Position) error {
	m := s.l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if m.holder != s.session {
		return fmt.Errorf("lease: mark high-water %s: %w: the lock is not ours", pos, ErrLost)
	}
	if s.marked.Less(pos) {
		s.marked = pos
		m.hw = HighWater{Term: s.term, Position: pos, ID: s.l.id}
	}
	return nil
}

// Release frees the lock without lock-delay.
func (s *memoryLease) Release(context.Context) error {
	m := s.l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.err != nil {
		return nil
	}
	if m.holder == s.session {
		m.holder = ""
		m.index++
		m.notifyLocked()
	}
	if s.l.lease == s {
		s.l.lease = nil
	}
	s.lose(fmt.Errorf("%w: released", ErrLost))
	return nil
}
