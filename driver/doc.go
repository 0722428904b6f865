// Package driver is the `bedrock` Nomad task driver: it runs app tasks as
// containers on the local Docker Engine (image handling, ports, mounts,
// resources, logs, stats, exec, signals), keeps enough state in each task
// handle to re-attach after the plugin or the client agent restarts, and
// reports the engine's health to Nomad.
//
// # Tasks
//
// One task config schema serves both kinds of task (Nomad has one schema
// per driver): a task with `image` is an app task, a task with a `syncer`
// block is the syncer task; exactly one of them must be set. App options
// follow Nomad's docker driver names (image, command, entrypoint, args,
// ports, env, labels, work_dir, user, hostname, network_mode, dns_*,
// cap_add/cap_drop, privileged, init, tty, interactive, auth/auth_file,
// force_pull, image_pull_timeout, shm_size, ulimit, mount, extra_hosts,
// sysctl, security_opt, readonly_rootfs, pids_limit, memory_hard_limit)
// plus `data`, the path inside the container bound to the allocation's
// shared alloc/data directory. Every option that can be checked before the
// engine is involved is checked first, so bad input gets an error naming
// the option and creates nothing.
//
// Inside the container Nomad's layout is the docker driver's: <alloc>/alloc
// at /alloc, the task's local and secrets directories at /local and
// /secrets. Group ports are published on their host IP and port, to the
// port's `to` (or the same number), TCP and UDP. Group network namespaces
// (network { mode = "bridge" }) are not supported yet: Docker cannot join
// a namespace by path, and bedrock does not create one itself.
//
// # Exits and stops
//
// StopTask sends the job's kill_signal (SIGTERM by default), waits
// kill_timeout, then SIGKILLs. A process killed by signal N exits with
// 128+N in Docker's report: the exit result carries that code and
// Signal = N. OOM kills are reported from the engine's OOMKilled flag.
//
// # Logs
//
// Container output reaches Nomad's log FIFOs through a detached follower
// process (the plugin binary's hidden `docker-logger` command, see
// RunLogger) that survives the plugin. Its position file bounds duplicates
// to one line per stream per follower crash; a plugin crash alone loses and
// repeats nothing.
//
// # Recovery and cleanup
//
// driver_state (JSON, handle version 1) holds the container id, log
// follower pid and position file, and what stats need. Containers carry
// com.bedrock-nomad.* labels (alloc_id, task, task_id, job, group,
// namespace, node_id); RecoverTask falls back to the task_id label when the
// state is unreadable. Containers of this node that no task owns are
// removed by the dangling-container reconciler only after two consecutive
// passes and creation_grace (Nomad recovers every task it knows right after
// a plugin start). Image GC removes, after gc.image_delay, only images
// bedrock itself pulled.
package driver
