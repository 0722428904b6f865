package announce_test

import (
	"context"
	"time"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
)

// The driver's side: run the app container only while the gate is open, stop it the moment
// the gate closes (deadline, demotion, silent or vanished syncer).
func ExampleFollow() {
	ctx := context.Background()
	g := announce.Follow(ctx, announce.SocketPath("/path/to/alloc"), announce.GateConfig{})
	start := func() {}
	stop := func(reason string) {}
	running := false
	g.Report(false) // lets a syncer stepping down hand over without waiting out its deadline
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-g.Updates():
			switch {
			case st.Open && !running && g.MayRun(time.Now()):
				start()
				running = true
				g.Report(true)
			case !st.Open && running:
				stop(st.Reason) // SIGTERM, SIGKILL within the lease's stop budget
				running = false
				g.Report(false)
			}
		}
	}
}
