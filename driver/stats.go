package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// TaskStats samples the container every interval with the engine's one-shot
// stats (cheap: no two-sample wait) and computes CPU percentages from the
// previous sample, so values match the requested interval. The stream ends
// when ctx ends or the task exits.
func (d *Driver) TaskStats(ctx context.Context, taskID string, interval time.Duration) (<-chan *plugin.TaskUsage, error) {
	h, err := d.mustHandle(taskID)
	if err != nil {
		return nil, err
	}
	if interval <= 0 {
		interval = time.Second
	}
	ch := make(chan *plugin.TaskUsage, 1)
	go func() {
		defer close(ch)
		var prev *container.StatsResponse
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			cur, err := d.sample(ctx, h.containerID)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if _, _, done := h.exitResult(); done {
					return
				}
				d.logger.Debug("stats sample failed", "task_id", taskID, "error", err)
			} else {
				u := usageFrom(cur, prev, &h.state)
				prev = cur
				select {
				case ch <- u:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-h.exited:
				return
			case <-ticker.C:
			}
		}
	}()
	return ch, nil
}

func (d *Driver) sample(ctx context.Context, id string) (*container.StatsResponse, error) {
	cli, err := d.client()
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := cli.ContainerStatsOneShot(sctx, id)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	defer func() { _ = r.Body.Close() }()
	var s container.StatsResponse
	if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("stats: decoding: %w", err)
	}
	return &s, nil
}

// usageFrom converts a sample. CPU: percent of one core, as Docker and
// Nomad's docker driver compute it (container CPU time delta over host CPU
// time delta, times online CPUs); ticks are that share of one core's MHz,
// where the node's total MHz is the task's cpu shares / PercentTicks.
// Memory: cgroup v1 reports rss/cache/max_usage; v2 has anon/file and no
// max, so only what is measured is named in Measured.
func usageFrom(cur, prev *container.StatsResponse, st *driverState) *plugin.TaskUsage {
	u := &plugin.TaskUsage{Timestamp: cur.Read}
	if u.Timestamp.IsZero() {
		u.Timestamp = time.Now()
	}
	cpus := float64(cur.CPUStats.OnlineCPUs)
	if cpus == 0 {
		cpus = float64(len(cur.CPUStats.CPUUsage.PercpuUsage))
	}
	if cpus == 0 {
		cpus = float64(runtime.NumCPU())
	}
	if prev != nil {
		sysDelta := float64(cur.CPUStats.SystemUsage) - float64(prev.CPUStats.SystemUsage)
		pct := func(now, before uint64) float64 {
			delta := float64(now) - float64(before)
			if sysDelta <= 0 || delta < 0 {
				return 0
			}
			return delta / sysDelta * cpus * 100
		}
		u.CPU.Percent = pct(cur.CPUStats.CPUUsage.TotalUsage, prev.CPUStats.CPUUsage.TotalUsage)
		u.CPU.SystemMode = pct(cur.CPUStats.CPUUsage.UsageInKernelmode, prev.CPUStats.CPUUsage.UsageInKernelmode)
		u.CPU.UserMode = pct(cur.CPUStats.CPUUsage.UsageInUsermode, prev.CPUStats.CPUUsage.UsageInUsermode)
	}
	if st.PercentTicks > 0 && st.CPUShares > 0 {
		totalMHz := float64(st.CPUShares) / st.PercentTicks
		u.CPU.TotalTicks = u.CPU.Percent / 100 * totalMHz / cpus
	}
	u.CPU.ThrottledPeriods = cur.CPUStats.ThrottlingData.ThrottledPeriods
	u.CPU.ThrottledTime = cur.CPUStats.ThrottlingData.ThrottledTime
	u.CPU.Measured = []string{"Percent", "Total Ticks", "System Mode", "User Mode", "Throttled Periods", "Throttled Time"}

	m := cur.MemoryStats
	u.Memory.Usage = m.Usage
	if rss, ok := m.Stats["rss"]; ok { // cgroup v1
		u.Memory.RSS = rss
		u.Memory.Cache = m.Stats["cache"]
		u.Memory.Swap = m.Stats["swap"]
		u.Memory.MaxUsage = m.MaxUsage
		u.Memory.Measured = []string{"RSS", "Cache", "Swap", "Usage", "Max Usage"}
	} else { // cgroup v2
		u.Memory.RSS = m.Stats["anon"]
		u.Memory.Cache = m.Stats["file"]
		u.Memory.Measured = []string{"RSS", "Cache", "Usage"}
	}
	return u
}
