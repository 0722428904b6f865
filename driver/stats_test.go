package driver

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

func TestUsageFromCgroupV1(t *testing.T) {
	prev := &container.StatsResponse{}
	prev.CPUStats.CPUUsage.TotalUsage = 1_000_000_000
	prev.CPUStats.SystemUsage = 100_000_000_000
	cur := &container.StatsResponse{Read: time.Unix(100, 0)}
	cur.CPUStats.OnlineCPUs = 2
	cur.CPUStats.CPUUsage.TotalUsage = 1_500_000_000 // +0.5 s of CPU
	cur.CPUStats.CPUUsage.UsageInUsermode = 400_000_000
	cur.CPUStats.SystemUsage = 102_000_000_000 // +2 s of host CPU (2 cpus x 1 s)
	cur.MemoryStats = container.MemoryStats{Usage: 30 << 20, MaxUsage: 40 << 20, Stats: map[string]uint64{"rss": 20 << 20, "cache": 5 << 20}}
	// 100 MHz shares at PercentTicks 100/4000: a 4000 MHz node, 2000 MHz a core.
	u := usageFrom(cur, prev, &driverState{CPUShares: 100, PercentTicks: 100.0 / 4000})
	if u.CPU.Percent != 50 {
		t.Errorf("percent %v, want 50 (half a core)", u.CPU.Percent)
	}
	if u.CPU.TotalTicks != 1000 {
		t.Errorf("ticks %v, want 1000 MHz", u.CPU.TotalTicks)
	}
	if u.Memory.RSS != 20<<20 || u.Memory.Cache != 5<<20 || u.Memory.MaxUsage != 40<<20 || u.Memory.Usage != 30<<20 {
		t.Errorf("memory %+v", u.Memory)
	}
	if !u.Timestamp.Equal(time.Unix(100, 0)) {
		t.Errorf("timestamp %v", u.Timestamp)
	}
	// First sample: no previous, percent 0 but memory is there.
	if u := usageFrom(cur, nil, &driverState{}); u.CPU.Percent != 0 || u.Memory.RSS == 0 {
		t.Errorf("first sample %+v", u)
	}
}

func TestUsageFromCgroupV2(t *testing.T) {
	cur := &container.StatsResponse{}
	cur.MemoryStats = container.MemoryStats{Usage: 9, Stats: map[string]uint64{"anon": 7, "file": 2}}
	u := usageFrom(cur, nil, &driverState{})
	if u.Memory.RSS != 7 || u.Memory.Cache != 2 || u.Memory.Usage != 9 || strings.Contains(strings.Join(u.Memory.Measured, ","), "Max Usage") {
		t.Errorf("v2 memory %+v", u.Memory)
	}
}

// The follower skips exactly what its position says was written.
func TestFollowerSkipsWrittenLines(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "out.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Keep a reader on the FIFO and collect what arrives.
	r, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make(chan string, 1)
	go func() {
		var buf bytes.Buffer
		b := make([]byte, 4096)
		for {
			_ = r.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := r.Read(b)
			buf.Write(b[:n])
			if err != nil {
				got <- buf.String()
				return
			}
		}
	}()

	state := filepath.Join(dir, "pos.json")
	f := &follower{errOut: io.Discard}
	if err := f.openState(state); err != nil {
		t.Fatal(err)
	}
	ts := "2026-01-01T00:00:01.000000000Z"
	ts2 := "2026-01-01T00:00:02.000000000Z"
	// Already written: up to ts2, one line at ts2.
	f.pos.Stdout = streamPos{TS: mustTime(t, ts2), N: 1}
	w := &fifoWriter{path: fifo}
	in := strings.Join([]string{
		ts + " old\n",
		ts2 + " same-ts-written\n",
		ts2 + " same-ts-new\n",
		"2026-01-01T00:00:03.000000000Z new\n",
	}, "")
	if err := f.lines(strings.NewReader(in), f.newSink(w, &f.pos.Stdout)); err != nil {
		t.Fatal(err)
	}
	w.close()
	out := <-got
	if out != "same-ts-new\nnew\n" {
		t.Errorf("written %q", out)
	}
	// The position was persisted.
	f2 := &follower{}
	if err := f2.openState(state); err != nil {
		t.Fatal(err)
	}
	if !f2.pos.Stdout.TS.Equal(mustTime(t, "2026-01-01T00:00:03Z")) || f2.pos.Stdout.N != 1 {
		t.Errorf("position %+v", f2.pos.Stdout)
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}
