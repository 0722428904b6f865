// Package capture journals an app's writes where they happen: the app's
// data path is a FUSE mount served by the syncer, a loopback over the
// real data directory that appends every mutating operation, in order,
// to a Journal. (Design note: see below; filled in with the package.)
package capture
