// Package jobspecs holds Bedrock's shipped HCL jobspecs and the placement
// policy that keeps users on the safe shape.
//
// Bedrock's failover only works when at least three instances of a group run
// on three different nodes, one syncer task runs beside the app as a prestart
// sidecar, and the app's data path is the one the syncer replicates. The
// package enforces that shape twice:
//
//   - statically, on HCL files, by [RunValidate] (the `validate` command),
//     which parses jobspecs generically with hcl/v2 (Nomad's own parser is not
//     a dependency) and reports compiler-like diagnostics; and
//   - at run time, on the live job read from Nomad's HTTP API, by [CheckJob]
//     and [Policy], which the driver calls in StartTask.
//
// [RunInit] prints a starter jobspec that validates clean, and [Demo] returns
// the demo app's jobspec shipped in this directory.
package jobspecs
