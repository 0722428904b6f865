// Package capture journals an app's writes where they happen (issue 16,
// crash-consistent capture). The app's data path becomes a FUSE mount
// served by the syncer: a loopback over the real data directory whose
// node type applies every mutating operation (write, truncate, create,
// mkdir, mknod, symlink, link, unlink, rmdir, rename with its flags,
// setattr, fallocate) to the backing directory and appends it to a
// Journal in the same critical section, with fsync (and optionally close)
// markers. A clone that applies the journal in order (Replayer) holds a
// prefix of the master's write history: every prefix is a state the
// master's directory really was in, and a prefix that ends at an fsync
// marker is the state at that fsync. Today's watcher cannot promise that:
// it learns that a file changed and reads its content when it sends it,
// so a clone can hold a newer A next to an older B.
//
// See FS for the ordering lock and why paths (not inode numbers) are
// journaled, and Options for the mount settings and what they cost
// (measured by e2e/benchio, `make bench-io`).
//
// # Serving the mount in production (not wired yet)
//
// The syncer container runs the server with --device /dev/fuse and
// CAP_SYS_ADMIN (mount(2) directly; no fusermount, no setuid helper). The
// backing directory is a private directory of the allocation (e.g.
// alloc/data/.bedrock/backing, excluded from everything the app sees);
// the mount is made onto the allocation's data path, which the driver
// bind-mounts with rshared propagation into both containers, so the app
// container sees an ordinary directory at its `data` path and the
// syncer's later mount propagates into it. The mount needs AllowOther
// (the app may run as any uid); permissions are checked by the kernel
// against the files' modes (default_permissions), as on a plain
// directory, while the server itself acts as root.
//
// The mount lives exactly as long as the server process. A restart of the
// Nomad agent or of the driver plugin does not touch it (the syncer
// container keeps running, and RecoverTask re-attaches to it). A crash of
// the syncer ends the FUSE connection: every later access by the app gets
// ENOTCONN, a write in flight gets an error, nothing is acknowledged that
// was not journaled. So the app must be stopped before the syncer: the
// gate already stops the app container when the syncer goes silent or the
// deadline passes, and a restarted syncer must unmount the dead mount
// (lazily, MNT_DETACH) and mount again before it announces master, so the
// app never starts on a dead mount or on the bare backing directory. The
// server never leaves a mount behind (Server.Unmount detaches a busy one).
//
// # Feeding the replication stream (not wired yet)
//
// The journal sequence is the replication position: the master's stream
// sends ops in sequence order with (term, seq); a clone applies them in
// order with a Replayer, fsyncs at the markers (and at least before every
// ack), and acks the highest sequence it has made durable. The journal is
// bounded in memory by the slowest clone's ack; a clone that falls behind
// the oldest kept op resyncs through the manifest as today. Two modes:
//
//   - async (default): fsync returns when the master's disk has the data;
//     clones follow within the replication lag, and a failover loses at
//     most the unacked tail (the 250 ms target).
//   - sync: the journal implements Barrier, and an fsync through the mount
//     returns only after a quorum of clones acked the sequence of its
//     marker; a transaction the app saw committed is on a clone.
//
// Op.Data is borrowed from the FUSE request buffer: a journal that frames
// ops straight onto the connection (or into a file) needs no copy beyond
// the one into the socket; the in-memory journal copies.
package capture
