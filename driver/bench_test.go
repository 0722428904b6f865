package driver_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// BenchmarkStartVsDockerRun measures start-to-running of the same image
// with the same port publishing through bedrock (StartTask until it
// returns: image check, create, start, log follower) and through
// `docker run -d` (until the CLI returns), median of 20 each, interleaved
// so engine load drifts affect both alike. It reports the ratio (target
// <= 1.2) and the plugin's RSS idle and with 20 tasks running, plus the
// log followers' RSS. It is a benchmark, not a timed test:
//
//	go test -run '^$' -bench StartVsDockerRun -benchtime 1x ./driver/
func BenchmarkStartVsDockerRun(b *testing.B) {
	requireDocker(b)
	const samples = 20
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := harness.StartAgent(ctx, harness.Options{Binary: pluginBin}, basePluginHCL)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Stop(context.Background())
	time.Sleep(500 * time.Millisecond)
	idleRSS := rssKiB(c.Plugin.Pid())

	var bedrock, docker []time.Duration
	var tasks []*harness.Task
	defer func() {
		for _, task := range tasks {
			_ = c.StopAndDestroy(context.Background(), task, time.Second, "SIGKILL")
			task.Logs.Close()
		}
	}()
	for i := 0; i < samples; i++ {
		task, err := c.PrepareTask(b.TempDir(), harness.TaskSpec{
			Job: "bench", Group: "g", Task: "app",
			Config: fmt.Sprintf("image = %q\nports = [\"http\"]\nargs = [\"/testapp\", \"serve\"]\n", testImage),
			Ports:  []harness.Port{{Label: "http", To: 8080}},
		})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := c.StartTask(ctx, task); err != nil {
			b.Fatal(err)
		}
		bedrock = append(bedrock, time.Since(t0))
		tasks = append(tasks, task)

		port, err := harness.FreePort("127.0.0.1")
		if err != nil {
			b.Fatal(err)
		}
		name := fmt.Sprintf("bedrock-bench-%d-%d", os.Getpid(), i)
		t0 = time.Now()
		out, err := exec.CommandContext(ctx, "docker", "run", "-d", "--name", name,
			"-p", fmt.Sprintf("127.0.0.1:%d:8080", port), testImage, "/testapp", "serve").CombinedOutput()
		if err != nil {
			b.Fatalf("docker run: %v: %s", err, out)
		}
		docker = append(docker, time.Since(t0))
		defer func() { _ = exec.Command("docker", "rm", "-f", name).Run() }()
	}
	time.Sleep(time.Second)
	busyRSS := rssKiB(c.Plugin.Pid())
	followers := followersRSSKiB()

	mb, md := median(bedrock), median(docker)
	ratio := float64(mb) / float64(md)
	b.ReportMetric(ratio, "ratio")
	b.ReportMetric(float64(mb.Microseconds())/1000, "bedrock-ms")
	b.ReportMetric(float64(md.Microseconds())/1000, "docker-run-ms")
	b.ReportMetric(float64(idleRSS), "plugin-idle-KiB")
	b.ReportMetric(float64(busyRSS), "plugin-20tasks-KiB")
	fmt.Printf("start-to-running, median of %d: bedrock %v, docker run %v, ratio %.2fx (target <= 1.2x)\n", samples, mb, md, ratio)
	fmt.Printf("plugin RSS: idle %d KiB, with %d tasks %d KiB; log followers: %d processes, %d KiB private in total (%d KiB RSS counting the shared binary pages)\n",
		idleRSS, samples, busyRSS, followers.count, followers.anon, followers.total)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func rssKiB(pid int) int { return statusKiB(pid, "VmRSS:") }

// anonKiB is the private part of RSS: followers share the binary's pages.
func anonKiB(pid int) int { return statusKiB(pid, "RssAnon:") }

func statusKiB(pid int, field string) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field) {
			f := strings.Fields(l)
			if len(f) >= 2 {
				n, _ := strconv.Atoi(f[1])
				return n
			}
		}
	}
	return 0
}

type rssSum struct{ total, anon, count int }

func followersRSSKiB() rssSum {
	var s rssSum
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmd), "docker-logger") {
			continue
		}
		s.total += rssKiB(pid)
		s.anon += anonKiB(pid)
		s.count++
	}
	return s
}
