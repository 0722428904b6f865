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
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-g.Updates():
			switch {
			case st.Open && !running && g.MayRun(time.Now()):
				start()
				running = true
			case !st.Open && running:
				stop(st.Reason) // SIGTERM, SIGKILL within the lease's stop budget
				running = false
			}
		}
	}
}
