package lease

import (
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// cand is a candidacy republished for the vacancy after term 3 (see Info.Vacant).
func cand(id string, term, seq uint64, caughtUp, live bool) Candidate {
	return Candidate{Info: Info{ID: id, Position: core.Position{Term: term, Seq: seq}, CaughtUp: caughtUp, Vacant: 3}, Live: live}
}

// behind is the wait of a candidate with rank r > 0: the lock-delay, then its rank.
func behind(t Timing, r int) time.Duration {
	return time.Duration(float64(t.LockDelay)*t.Drift) + min(time.Duration(r)*t.RankDelay, t.MaxRankDelay)
}

func TestDecide(t *testing.T) {
	tm := DefaultTiming()
	self := func(id string, term, seq uint64, caughtUp bool) Info {
		return Info{ID: id, Position: core.Position{Term: term, Seq: seq}, CaughtUp: caughtUp}
	}
	cands := []Candidate{
		cand("a", 3, 100, true, true),
		cand("b", 3, 90, true, true),
		cand("c", 2, 500, true, true),  // older term loses to any newer-term position
		cand("d", 9, 999, true, false), // dead: ignored
		cand("e", 3, 100, false, true), // not caught up: behind every caught-up one
	}
	tests := []struct {
		name     string
		self     Info
		everHeld bool
		eligible bool
		rank     int
		delay    time.Duration
	}{
		{"best goes first", self("a", 3, 100, true), true, true, 0, 0},
		{"second waits out the lock-delay and one step", self("b", 3, 90, true), true, true, 1, behind(tm, 1)},
		{"third waits two", self("c", 2, 500, true), true, true, 2, behind(tm, 2)},
		{"fresher self than published", self("c", 3, 101, true), true, true, 0, 0},
		{"tie broken by id", self("a0", 3, 100, true), true, true, 1, behind(tm, 1)},
		{"tie broken by id, smaller wins", self("A", 3, 100, true), true, true, 0, 0},
		{"incomplete copy never promoted", self("e", 3, 100, false), true, false, 0, 0},
		{"first master of a new group may be anyone", self("z", 0, 0, false), false, true, 4, behind(tm, 4)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := Vacancy{}
			if tc.everHeld {
				v.Term = 3
			}
			d := Decide(tc.self, v, cands, tm)
			if d.Eligible != tc.eligible || (tc.eligible && (d.Rank != tc.rank || d.Delay != tc.delay)) {
				t.Fatalf("Decide = %+v, want eligible=%v rank=%d delay=%s", d, tc.eligible, tc.rank, tc.delay)
			}
			if d.Reason == "" {
				t.Fatal("no reason")
			}
		})
	}
}

func TestDecideCapsDelay(t *testing.T) {
	tm := DefaultTiming()
	var cands []Candidate
	for i := range 10 {
		c := cand(string(rune('b'+i)), 5, uint64(100+i), true, true)
		c.Vacant = 5
		cands = append(cands, c)
	}
	d := Decide(Info{ID: "a", Position: core.Position{Term: 5, Seq: 1}, CaughtUp: true}, Vacancy{Term: 5}, cands, tm)
	if d.Rank != 10 || d.Delay != behind(tm, 10) {
		t.Fatalf("Decide = %+v, want rank 10 capped at %s", d, tm.MaxRankDelay)
	}
}

func TestDecideExactlyOneGoesFirst(t *testing.T) {
	tm := DefaultTiming()
	cands := []Candidate{
		cand("x", 4, 7, true, true), cand("y", 4, 7, true, true), cand("z", 4, 7, true, true),
	}
	first := 0
	for _, c := range cands {
		if d := Decide(c.Info, Vacancy{Term: 3}, cands, tm); d.Rank == 0 && d.Delay == 0 {
			first++
		}
	}
	if first != 1 {
		t.Fatalf("%d candidates go first, want exactly 1", first)
	}
}

// The last holder's candidacy, published before it became master, does not hold the others
// back after it released the lock (it republishes for the vacancy if it campaigns again).
func TestDecideIgnoresTheLastHoldersLeftover(t *testing.T) {
	tm := DefaultTiming()
	leftover := Candidate{Info: Info{ID: "a", Position: core.Position{Term: 1, Seq: 10}, CaughtUp: true}, Live: true}
	self := Info{ID: "b", Position: core.Position{Term: 1, Seq: 10}, CaughtUp: true}
	v := Vacancy{Term: 2, HighWater: HighWater{Term: 2, Position: core.Position{Term: 1, Seq: 10}}, Holder: "a"}
	if d := Decide(self, v, []Candidate{leftover}, tm); d.Rank != 0 || d.Delay != 0 {
		t.Fatalf("Decide = %+v: the old master's leftover candidacy holds b back", d)
	}
	leftover.Vacant = 2 // it campaigns again: it counts
	if d := Decide(self, v, []Candidate{leftover}, tm); d.Rank != 1 {
		t.Fatalf("Decide = %+v: a republished candidacy is ignored", d)
	}
}
