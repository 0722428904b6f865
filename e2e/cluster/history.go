package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Holder is one observation of the leader key.
type Holder struct {
	At      time.Time
	Term    uint64
	Session string
	// ID is the holder's instance (allocation) id, from the key's value.
	ID string
}

// History records every change of the leader key seen through blocking queries on the
// server: Consul's side of "who was master when".
type History struct {
	mu      sync.Mutex
	holders []Holder
}

func watchHistory(ctx context.Context, client *api.Client, key string) *History {
	h := &History{}
	go func() {
		var index uint64
		var last Holder
		for ctx.Err() == nil {
			pair, meta, err := client.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second}).WithContext(ctx))
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			index = max(meta.LastIndex, 1)
			cur := holderOf(pair)
			if cur.Term != last.Term || cur.Session != last.Session {
				cur.At = time.Now()
				last = cur
				h.mu.Lock()
				h.holders = append(h.holders, cur)
				h.mu.Unlock()
			}
		}
	}()
	return h
}

func holderOf(p *api.KVPair) Holder {
	if p == nil {
		return Holder{}
	}
	var info struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(p.Value, &info)
	return Holder{Term: p.LockIndex, Session: p.Session, ID: info.ID}
}

func readHolder(ctx context.Context, client *api.Client, key string) (Holder, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pair, _, err := client.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return Holder{}, fmt.Errorf("reading %s: %w", key, err)
	}
	return holderOf(pair), nil
}

// Holders returns the observations so far.
func (h *History) Holders() []Holder {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Holder(nil), h.holders...)
}

// Overlaps returns, from Consul's side, any two sessions that held the key at once: never
// possible with a lock, so a non-empty result means the observations are wrong or the lock was
// broken (e.g. a key deleted and re-created). Terms must only grow.
func (h *History) Overlaps() []string {
	var bad []string
	hs := h.Holders()
	for i := 1; i < len(hs); i++ {
		if hs[i].Term < hs[i-1].Term {
			bad = append(bad, fmt.Sprintf("term went back from %d to %d", hs[i-1].Term, hs[i].Term))
		}
		if hs[i].Session != "" && hs[i-1].Session != "" && hs[i].Session != hs[i-1].Session && hs[i].Term == hs[i-1].Term {
			bad = append(bad, fmt.Sprintf("two sessions at term %d", hs[i].Term))
		}
	}
	return bad
}

func (h *History) String() string {
	var b strings.Builder
	for i, x := range h.Holders() {
		if i > 0 {
			b.WriteString(" → ")
		}
		if x.Session == "" {
			fmt.Fprintf(&b, "free(term %d)@%s", x.Term, x.At.Format("15:04:05.000"))
			continue
		}
		id := x.ID
		if len(id) > 8 {
			id = id[:8]
		}
		fmt.Fprintf(&b, "%s(term %d)@%s", id, x.Term, x.At.Format("15:04:05.000"))
	}
	return b.String()
}
