package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/consul/api"
)

// A syncer killed with SIGKILL (or crashed, or OOM-killed) leaves its session alive until
// Consul's TTL timer fires (2·TTL on 1.x servers) and then blocks the lock for the lock-delay:
// about 8 s with the defaults, during which the group has no master. The process that started
// the syncer (the driver) sees the death within milliseconds, so it can end the mastership at
// once — but only it can do so safely, because only it can prove that nothing acts on the
// session any more: the syncer's container has exited and the app it gated is stopped. Under
// that proof a plain release is safe and skips the lock-delay (which exists to protect a holder
// that may still be running; here there is none). The syncer records its session in the
// allocation for this purpose.

// SessionFileName is the record's file name in the allocation's alloc/tmp directory (shared by
// the allocation's tasks, not replicated, gone with the allocation).
const SessionFileName = "bedrock-session.json"

// SessionRecord is what a syncer writes about its current session.
type SessionRecord struct {
	Session   string `json:"session"`
	LeaderKey string `json:"leader_key"`
}

// WriteSessionRecord replaces the record at path atomically (temp file + rename), so a reader
// never sees half a record.
func WriteSessionRecord(path string, rec SessionRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("lease: session record: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".session-*")
	if err != nil {
		return fmt.Errorf("lease: session record: %w", err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("lease: session record: %w", errors.Join(werr, cerr))
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("lease: session record: %w", err)
	}
	return nil
}

// ReadSessionRecord reads a record written by WriteSessionRecord.
func ReadSessionRecord(path string) (SessionRecord, error) {
	var rec SessionRecord
	b, err := os.ReadFile(path) //nolint:gosec // a path inside the allocation, chosen by the driver
	if err != nil {
		return rec, fmt.Errorf("lease: session record: %w", err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("lease: session record %s: %w", path, err)
	}
	if rec.Session == "" || rec.LeaderKey == "" {
		return rec, fmt.Errorf("lease: session record %s is incomplete", path)
	}
	return rec, nil
}

// ReleaseAbandoned ends the session of a dead holder: it releases the leader key if that
// session holds it (no lock-delay: a release, not an invalidation), then destroys the session
// (its candidacy disappears). It reports whether the lock was released and at which term.
//
// Call it only once it is certain that no process acts on the session's mastership: the syncer
// that owned it has exited and every app container it gated is stopped. Releasing a live
// holder's lock would let another instance be master while the holder's app still runs.
func ReleaseAbandoned(ctx context.Context, client *api.Client, rec SessionRecord) (released bool, term uint64, err error) {
	kv := client.KV()
	pair, _, err := kv.Get(rec.LeaderKey, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return false, 0, fmt.Errorf("lease: reading %s: %w", rec.LeaderKey, err)
	}
	if pair != nil && pair.Session == rec.Session {
		ok, _, err := kv.Release(&api.KVPair{Key: rec.LeaderKey, Value: pair.Value, Session: rec.Session}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return false, 0, fmt.Errorf("lease: releasing %s: %w", rec.LeaderKey, err)
		}
		released, term = ok, pair.LockIndex
	}
	if _, err := client.Session().Destroy(rec.Session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return released, term, fmt.Errorf("lease: destroying session %s: %w", rec.Session, err)
	}
	return released, term, nil
}
