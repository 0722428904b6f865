package lease

import (
	"testing"
	"time"
)

func cand(id string, term, seq uint64, caughtUp, live bool) Candidate {
	return Candidate{Info: Info{ID: id, Position: Position{Term: term, Seq: seq}, CaughtUp: caughtUp}, Live: live}
}

func TestDecide(t *testing.T) {
	tm := DefaultTiming()
	self := func(id string, term, seq uint64, caughtUp bool) Info {
		return Info{ID: id, Position: Position{Term: term, Seq: seq}, CaughtUp: caughtUp}
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
		{"second waits one step", self("b", 3, 90, true), true, true, 1, time.Second},
		{"third waits two", self("c", 2, 500, true), true, true, 2, 2 * time.Second},
		{"fresher self than published", self("c", 3, 101, true), true, true, 0, 0},
		{"tie broken by id", self("a0", 3, 100, true), true, true, 1, time.Second},
		{"tie broken by id, smaller wins", self("A", 3, 100, true), true, true, 0, 0},
		{"incomplete copy never promoted", self("e", 3, 100, false), true, false, 0, 0},
		{"first master of a new group may be anyone", self("z", 0, 0, false), false, true, 4, 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.self, tc.everHeld, cands, tm)
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
		cands = append(cands, cand(string(rune('b'+i)), 5, uint64(100+i), true, true))
	}
	d := Decide(Info{ID: "a", Position: Position{Term: 5, Seq: 1}, CaughtUp: true}, true, cands, tm)
	if d.Rank != 10 || d.Delay != tm.MaxRankDelay {
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
		if d := Decide(c.Info, true, cands, tm); d.Rank == 0 {
			first++
		}
	}
	if first != 1 {
		t.Fatalf("%d candidates go first, want exactly 1", first)
	}
}
