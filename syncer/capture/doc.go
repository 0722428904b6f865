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
// # Serving the mount in production
//
// In the syncer's async and sync modes (syncer/mount.go, driver/capturemount.go) the
// syncer container runs the server with --device /dev/fuse and CAP_SYS_ADMIN (mount(2)
// directly; no fusermount, no setuid helper). The backing directory is the syncer task's
// own local/data, which no other task binds; the mount point is the allocation's
// alloc/bedrock-live, a shared mount point on the node that the syncer container binds with
// rshared propagation, so its mount reaches the node and the app container, which binds it
// at its data path when it starts (only after the syncer announced master). AllowOther lets
// an app running as any uid use it; the kernel checks permissions (default_permissions).
//
// The mount lives exactly as long as the server process and the mastership. A restart of the
// Nomad agent or of the driver plugin does not touch it. A crash of the syncer ends the FUSE
// connection: every later access by the app gets ENOTCONN, nothing is acknowledged that was
// not journaled, and the gate stops the app; the plugin detaches dead mounts (at its start,
// before Nomad restores allocations, and periodically) and the next syncer mounts afresh.
//
// # Feeding the replication stream
//
// The replica.Master is the Journal (replica/journal.go): its op log sequence is the
// replication position; a clone cut over to the journal applies the ops in order with a
// Replayer and acknowledges a position only after a syncfs, so it is durable at every
// position it reports. Two modes:
//
//   - async (default): fsync returns when the master's disk has the data;
//     clones follow within the replication lag, and a failover loses at
//     most the unacked tail.
//   - sync: the Master is also the Barrier, and an fsync through the mount
//     returns only after SyncAcks clones acknowledged the sequence of its
//     marker; a transaction the app saw committed is on a clone.
//
// Op.Data is borrowed from the FUSE request buffer: a journal that frames
// ops straight onto the connection (or into a file) needs no copy beyond
// the one into the socket; the in-memory journal copies once, into slabs
// it recycles.
//
// # What the mount costs, and what was tried (issue 16)
//
// A synchronous FUSE round trip costs 25-35 µs on the 2-vCPU machines
// Bedrock is measured on, almost all of it two cross-CPU wake-ups (the
// server's reader thread, then the app), which a guest that halts idle
// vCPUs pays in full; the server's own work per request is a few µs. So
// the mount costs what its round trips cost, and the levers are fewer
// requests and fewer copies; see e2e/benchio for the numbers. Kept:
// write-only opens are direct I/O (one copy of the data and its page
// cache less, one request per write(2); see FS.openOut) and the journal
// copies into recycled slabs (a fresh 1 MiB allocation per write cost
// more than the copy). Not kept, and why:
//
//   - the writeback cache reorders writes (it breaks the prefix property);
//   - dropping default_permissions saves the GETATTR of the directory the
//     kernel sends before each create and rename (2 of 8 round trips of an
//     atomic save), but FUSE tells the server only the caller's uid, gid
//     and pid: not its supplementary groups nor its capabilities, and the
//     pid of a process in the app container's pid namespace is 0 in the
//     syncer's. A server-side check would be wrong whenever a group other
//     than the primary one decides (mode 0640 files of a shared group,
//     0604 files that shut a group out), so the kernel keeps checking;
//   - the LOOKUP of the rename target after each rename is the kernel's
//     own revalidation (LOOKUP_RENAME_TARGET forces it whatever the entry
//     timeout) and the negative LOOKUP before each create is how the
//     kernel opens with O_CREAT a name it has no dentry for (the rename
//     moved the temporary name's dentry): no cache or notification of
//     ours avoids either, and answering them from our table instead of a
//     statx saves a µs of a 30 µs round trip;
//   - a per-inode lock for the backing pwrite: the benchmark's workloads,
//     like most apps, have one writer at a time, and the fs-wide lock is
//     held for a pwrite into the page cache and a copy; it does not
//     limit throughput (the round trip does);
//   - passthrough of read-only opens: the workloads that miss the target
//     are write paths, and the kernel keeps an inode either in cached or
//     in passthrough I/O mode and fails an open that conflicts with the
//     descriptors already open, an error apps would see on open(2);
//   - direct I/O for read-write opens: it would send every read(2) to the
//     server (SQLite reads its pages 4 KiB at a time) and needs
//     FUSE_DIRECT_IO_ALLOW_MMAP for the -shm mapping.
package capture
