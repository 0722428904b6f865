package replica

import (
	"sort"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// sentReads makes a connection send each block of a growing file once per change, not once
// per op. A clone that lags receives a burst of ops for one file (each growth of a log or a
// database is an op naming the new blocks, and every op also carries whatever lies past the
// size it saw); each is sent by reading the file as it is NOW. Before, a 32 MiB file written
// during a one-second stall was sent twelve times over (383 MB).
//
// The rule: an op o describes a change made before o was cut (o.at). Data read from a read
// that began after o.at already includes that change (or a later one), so a block this
// connection sent from such a read need not be sent again for o. A later change of the block
// is cut into a later op, after the read, and is sent with it. Only full blocks count as sent
// (the last, partial block may grow); a whole-file op (the clone builds a new file), a rename,
// a delete or a type change forgets the path, since what was sent went into another file.
// Reads that began before the op being sent can never cover it or any later op (ops are sent
// in order, o.at never decreases) and are dropped as they are met.
type sentReads map[string][]sentRead

// sentRead is one send of a file's blocks and when the read began.
type sentRead struct {
	at     time.Time
	ranges []wire.Range
}

// maxSentPaths bounds the memory of sentReads: past it, reads too old to cover the current op
// are swept from every path.
const maxSentPaths = 4096

func (r *sentReads) forget(name string) {
	for k := range *r {
		if tree.Under(k, name) {
			delete(*r, k)
		}
	}
}

// remember records blocks rg as sent from a read that began at at.
func (r *sentReads) remember(name string, at time.Time, rg wire.Range) {
	if *r == nil {
		*r = make(sentReads)
	}
	reads := (*r)[name]
	if k := len(reads) - 1; k >= 0 && reads[k].at.Equal(at) {
		reads[k].ranges = append(reads[k].ranges, rg)
		return
	}
	(*r)[name] = append(reads, sentRead{at: at, ranges: []wire.Range{rg}})
}

// uncovered returns the blocks of ranges not sent from a read that began after since.
func (r *sentReads) uncovered(name string, ranges []wire.Range, since time.Time) []wire.Range {
	if len(*r) > maxSentPaths {
		for k, reads := range *r {
			if reads = dropBefore(reads, since); len(reads) == 0 {
				delete(*r, k)
			} else {
				(*r)[k] = reads
			}
		}
	}
	reads := dropBefore((*r)[name], since)
	if len(reads) == 0 {
		delete(*r, name)
		return ranges
	}
	(*r)[name] = reads
	var cov []wire.Range
	for _, rd := range reads {
		cov = append(cov, rd.ranges...)
	}
	sort.Slice(cov, func(i, j int) bool { return cov[i].Start < cov[j].Start })
	var out []wire.Range
	for _, rg := range ranges {
		start, end := rg.Start, rg.Start+rg.Count
		for _, cv := range cov {
			if start >= end {
				break
			}
			cs, ce := cv.Start, cv.Start+cv.Count
			if ce <= start || cs >= end {
				continue
			}
			if cs > start {
				out = append(out, wire.Range{Start: start, Count: cs - start})
			}
			start = max(start, ce)
		}
		if start < end {
			out = append(out, wire.Range{Start: start, Count: end - start})
		}
	}
	return out
}

// dropBefore keeps the reads that began after since.
func dropBefore(reads []sentRead, since time.Time) []sentRead {
	kept := reads[:0]
	for _, rd := range reads {
		if rd.at.After(since) {
			kept = append(kept, rd)
		}
	}
	return kept
}
