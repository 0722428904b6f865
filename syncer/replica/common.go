// Package replica is the replication data path: a Master that watches the
// data directory and streams changes, and a Clone that mirrors it.
//
// Protocol outline (frames from package wire; every frame carries the
// sender's term, checked before its payload is looked at):
//
//	master -> clone  Hello{version, session, nonce}       (term, head)
//	clone  -> master Auth{nonce, mac, id}                  (known term, position)
//	master -> clone  AuthOK{mac}
//	                 (every later frame sealed: see wire/secure.go and HandshakeKeys)
//	clone  -> master Resume{session} | NeedManifest        (position)
//	master -> clone  Resume (ok, stream follows) | ManifestChunk... ManifestEnd (snapshot seq S)
//	clone  -> master Request... RequestsDone               (only the blocks it lacks)
//	master -> clone  FileBegin FileData... FileEnd ...  Synced (S)
//	master -> clone  live ops S+1, S+2, ... and Heartbeat(head) when idle
//	clone  -> master Ack(position) after applying and syncing
//
// Decisions:
//   - The clone drives the initial sync: it compares the master's manifest
//     with hashes of its own disk, so a clone that crashed in the middle of
//     applying something repairs itself on the next start, and a former
//     master can see what it is about to lose and move it aside first.
//   - Live ops hold block indexes, not data: the sender reads the blocks when
//     it sends them. Data read later is never older than the op, so a clone
//     that applies ops in order always converges to the master's latest
//     content, and the op log stays small enough to keep in memory.
//   - Sequence numbers live only in the master's memory. A clone resumes by
//     position only within the same master session (a process run); anything
//     else goes through the manifest, which is always correct.
package replica

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// Errors callers can test for.
var (
	ErrAuth      = errors.New("peer authentication failed")
	ErrStaleTerm = errors.New("stale term")
	ErrFenced    = errors.New("fenced by a newer term")
)

const (
	handshakeTimeout = 10 * time.Second
	heartbeatEvery   = 500 * time.Millisecond
	// readTimeout declares a silent master dead; several heartbeats long.
	readTimeout = 5 * time.Second
	// bulkTimeout bounds a single read or write while data is moving in
	// bulk (initial sync, acks): a peer writing to a slow disk may not read
	// for a while, which is not a reason to start over.
	bulkTimeout   = 30 * time.Second
	dataChunk     = 256 * 1024 // bytes per FileData frame
	manifestChunk = 1 << 20
)

func nonce() (n [wire.NonceSize]byte) {
	_, _ = rand.Read(n[:])
	return n
}

func randomSession() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1
}
