package lease_test

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/announce"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/lease"
)

// The syncer's election loop: campaign, announce master with the lease's deadline and move the
// deadline with every renewal, announce the loss at once. (Replication is left out.)
func Example() {
	ctx := context.Background()
	log := hclog.Default()
	allocID, allocDir := "0b1c...", "/path/to/alloc"

	client, err := api.NewClient(api.DefaultConfig()) // the local agent
	if err != nil {
		log.Error("consul", "error", err)
		return
	}
	l, err := lease.NewConsul(ctx, lease.ConsulConfig{
		Client: client, Namespace: "default", Job: "minecraft", Group: "server", ID: allocID, Logger: log,
	})
	if err != nil {
		log.Error("election", "error", err) // e.g. ErrTTLRefused: says what to configure
		return
	}

	ann, err := announce.Listen(ctx, announce.SocketPath(allocDir), announce.AnnouncerConfig{Logger: log})
	if err != nil {
		log.Error("announce", "error", err)
		return
	}
	defer func() { _ = ann.Close() }()

	// Graceful stop: announce the step-down, let the driver stop the app (its report says
	// when; without a reporting driver, wait out the deadline plus the stop budget), ship the
	// last changes, then Close: it releases without lock-delay and a clone takes over at once.
	var current lease.Lease
	defer func() {
		ann.Set(announce.State{Role: core.RoleUnknown, Message: "stopping"})
		if current != nil && current.Err() == nil {
			wctx, cancel := context.WithDeadline(context.Background(), current.Deadline().Add(l.Timing().StopBudget))
			if err := ann.WaitAppStopped(wctx); err != nil {
				<-wctx.Done() // no driver confirmed: the deadline plus the stop budget fences it
			}
			cancel()
		}
		_ = l.Close(context.Background())
	}()

	self := func() lease.Info { // from the replica's state
		return lease.Info{ID: allocID, Address: "10.0.0.7:7000", Position: core.Position{Term: 3, Seq: 42}, CaughtUp: true}
	}
	for ctx.Err() == nil {
		ann.Set(announce.State{Role: core.RoleCandidate, Message: "waiting for the election"})
		ls, err := lease.Campaign(ctx, l, self, log)
		if err != nil {
			return
		}
		current = ls
		ann.Set(announce.State{Role: core.RoleMaster, Term: ls.Term(), Deadline: ls.Deadline(), CaughtUp: true,
			Message: fmt.Sprintf("promoted to master at term %d", ls.Term())})
	held:
		for {
			select {
			case d, ok := <-ls.Renewed():
				if !ok {
					break held
				}
				ann.Update(func(s *announce.State) { s.Deadline = d })
			case <-ls.Done():
				break held
			}
		}
		ann.Set(announce.State{Role: core.RoleUnknown, Term: ls.Term(), Message: fmt.Sprintf("lost mastership: %v", ls.Err())})
	}
}
