package lease

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestDefaultTimingNumbers(t *testing.T) {
	d := DefaultTiming()
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	v := d.Validity()
	// 2s/1.05 - 0.5s = 1.40476s
	if v < 1400*time.Millisecond || v > 1410*time.Millisecond {
		t.Errorf("validity = %s, want ≈1.405s", v)
	}
	if got := d.RenewInterval(true); got != v/3 {
		t.Errorf("master renew interval = %s, want %s", got, v/3)
	}
	if got := d.RenewInterval(false); got != time.Second {
		t.Errorf("renew interval = %s, want 1s", got)
	}
	if got := d.Margin(); got != d.TTL-v {
		t.Errorf("margin = %s", got)
	}
	if got := d.WorstTakeover(); got != 8*time.Second {
		t.Errorf("worst takeover = %s, want 8s", got)
	}
	s := time.Now()
	if got := d.DeadlineAfter(s); !got.Equal(s.Add(v)) {
		t.Errorf("deadline = %v", got)
	}
}

// The inequality of the safety argument, for any accepted timing: an old master's app is dead
// (deadline + stop budget, measured on a clock up to Drift slower than real time... or faster)
// before the earliest foreign acquisition s + LockDelay/Drift, and well before the TTL path's.
func TestSafetyInequalityHoldsForAcceptedTimings(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	accepted := 0
	for range 20000 {
		tm := Timing{
			TTL:          time.Duration(r.Int64N(int64(30*time.Second))) + 500*time.Millisecond,
			LockDelay:    time.Duration(r.Int64N(int64(20 * time.Second))),
			Drift:        1 + r.Float64()*0.3,
			StopBudget:   time.Duration(r.Int64N(int64(3 * time.Second))),
			RetryEvery:   100 * time.Millisecond,
			RankDelay:    time.Second,
			MaxRankDelay: 3 * time.Second,
		}
		if tm.Validate() != nil {
			continue
		}
		accepted++
		// local elapsed time V+StopBudget may correspond to Drift times more real time,
		// while the server's lock-delay may pass Drift times faster: both together must fit
		dead := float64(tm.Validity()+tm.StopBudget) * tm.Drift
		if dead > float64(tm.LockDelay)*1.0000001 {
			t.Fatalf("%+v: app dead after %v real, lock-delay %v", tm, time.Duration(dead), tm.LockDelay)
		}
		if tm.Validity() >= tm.TTL {
			t.Fatalf("%+v: validity %s not under the TTL", tm, tm.Validity())
		}
		if tm.RenewInterval(true)*3 > tm.Validity() {
			t.Fatalf("%+v: fewer than three renewals per validity window", tm)
		}
	}
	if accepted < 100 {
		t.Fatalf("only %d timings accepted", accepted)
	}
}

func TestTimingValidateRejects(t *testing.T) {
	cases := map[string]func(*Timing){
		"no lock-delay":    func(tm *Timing) { tm.LockDelay = 0 },
		"lock-delay > cap": func(tm *Timing) { tm.LockDelay = 61 * time.Second; tm.TTL = 70 * time.Second },
		"lock-delay > TTL": func(tm *Timing) { tm.LockDelay = 4 * time.Second },
		"short TTL":        func(tm *Timing) { tm.TTL = 500 * time.Millisecond },
		"drift < 1":        func(tm *Timing) { tm.Drift = 0.9 },
		"budget eats all":  func(tm *Timing) { tm.StopBudget = 1800 * time.Millisecond },
		"negative budget":  func(tm *Timing) { tm.StopBudget = -1 },
	}
	for name, mut := range cases {
		tm := DefaultTiming()
		mut(&tm)
		if err := tm.Validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, tm)
		}
	}
	tm := DefaultTiming()
	tm.StopBudget = 1800 * time.Millisecond
	if err := tm.Validate(); err == nil || !strings.Contains(err.Error(), "validity") {
		t.Errorf("error should explain the validity: %v", err)
	}
}

func TestWithDefaults(t *testing.T) {
	got := Timing{TTL: 5 * time.Second}.withDefaults()
	want := DefaultTiming()
	want.TTL = 5 * time.Second
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
