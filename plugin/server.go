package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/basepb"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// baseServer serves the "base" plugin set.
type baseServer struct {
	basepb.UnimplementedBasePluginServer
	impl   Driver
	logger hclog.Logger
}

func (s *baseServer) PluginInfo(context.Context, *basepb.PluginInfoRequest) (*basepb.PluginInfoResponse, error) {
	info := s.impl.Info()
	return &basepb.PluginInfoResponse{
		Type:              basepb.PluginType_DRIVER,
		PluginApiVersions: []string{APIVersion},
		PluginVersion:     info.Version,
		Name:              info.Name,
	}, nil
}

func (s *baseServer) ConfigSchema(context.Context, *basepb.ConfigSchemaRequest) (*basepb.ConfigSchemaResponse, error) {
	return &basepb.ConfigSchemaResponse{Spec: s.impl.ConfigSchema()}, nil
}

func (s *baseServer) SetConfig(ctx context.Context, req *basepb.SetConfigRequest) (*basepb.SetConfigResponse, error) {
	if v := req.GetPluginApiVersion(); v != "" && v != APIVersion {
		return nil, status.Errorf(codes.InvalidArgument, "plugin API version %q is not supported; this plugin speaks %s", v, APIVersion)
	}
	cfg := &PluginConfig{Msgpack: req.GetMsgpackConfig(), APIVersion: req.GetPluginApiVersion()}
	if nc := req.GetNomadConfig(); nc != nil {
		cfg.Agent = &AgentConfig{
			ClientMinPort: nc.GetDriver().GetClientMinPort(),
			ClientMaxPort: nc.GetDriver().GetClientMaxPort(),
		}
	}
	if err := s.impl.SetConfig(ctx, cfg); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &basepb.SetConfigResponse{}, nil
}

// driverServer serves the "driver" plugin set.
type driverServer struct {
	driverpb.UnimplementedDriverServer
	impl   Driver
	logger hclog.Logger
}

func (s *driverServer) Init(ctx context.Context, _ *driverpb.InitRequest) (*driverpb.InitResponse, error) {
	return &driverpb.InitResponse{}, toStatus(s.impl.Init(ctx))
}

func (s *driverServer) Shutdown(ctx context.Context, _ *driverpb.ShutdownRequest) (*driverpb.ShutdownResponse, error) {
	return &driverpb.ShutdownResponse{}, toStatus(s.impl.Shutdown(ctx))
}

func (s *driverServer) TaskConfigSchema(context.Context, *driverpb.TaskConfigSchemaRequest) (*driverpb.TaskConfigSchemaResponse, error) {
	return &driverpb.TaskConfigSchemaResponse{Spec: s.impl.TaskConfigSchema()}, nil
}

func (s *driverServer) Capabilities(context.Context, *driverpb.CapabilitiesRequest) (*driverpb.CapabilitiesResponse, error) {
	return &driverpb.CapabilitiesResponse{Capabilities: CapabilitiesToProto(s.impl.Capabilities())}, nil
}

// Fingerprint keeps the stream open until the client cancels it: an ended
// stream makes the Nomad client re-open it in a tight loop.
func (s *driverServer) Fingerprint(_ *driverpb.FingerprintRequest, stream driverpb.Driver_FingerprintServer) error {
	ch, err := s.impl.Fingerprint(stream.Context())
	if err != nil {
		return toStatus(err)
	}
	return forwardUntilCancelled(stream.Context(), ch, FingerprintToProto, stream.Send)
}

// TaskEvents, like Fingerprint, stays open until cancelled.
func (s *driverServer) TaskEvents(_ *driverpb.TaskEventsRequest, stream driverpb.Driver_TaskEventsServer) error {
	ch, err := s.impl.TaskEvents(stream.Context())
	if err != nil {
		return toStatus(err)
	}
	return forwardUntilCancelled(stream.Context(), ch, TaskEventToProto, stream.Send)
}

// forwardUntilCancelled sends every value of ch until the client cancels.
// A closed channel does not end the stream (the client would take that for
// a broken plugin and retry at once); a failed send means the client left.
func forwardUntilCancelled[T any, P any](ctx context.Context, ch <-chan T, conv func(T) P, send func(P) error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case v, ok := <-ch:
			if !ok {
				<-ctx.Done()
				return nil
			}
			if err := send(conv(v)); err != nil {
				return nil //nolint:nilerr // the client went away; nothing to report to it
			}
		}
	}
}

func (s *driverServer) StartTask(ctx context.Context, req *driverpb.StartTaskRequest) (*driverpb.StartTaskResponse, error) {
	if req.GetTask() == nil {
		return nil, status.Error(codes.InvalidArgument, "StartTask without a task config")
	}
	h, net, err := s.impl.StartTask(ctx, TaskConfigFromProto(req.GetTask()))
	if err != nil {
		var re *RecoverableError
		if !errors.As(err, &re) {
			// Unmarked start errors are final: the user must change the job.
			err = NewFatalError(err)
		}
		return nil, toStatus(err)
	}
	return &driverpb.StartTaskResponse{
		Result:          driverpb.StartTaskResponse_SUCCESS,
		Handle:          TaskHandleToProto(h),
		NetworkOverride: NetworkOverrideToProto(net),
	}, nil
}

func (s *driverServer) RecoverTask(ctx context.Context, req *driverpb.RecoverTaskRequest) (*driverpb.RecoverTaskResponse, error) {
	h := TaskHandleFromProto(req.GetHandle())
	if h == nil {
		return nil, status.Error(codes.InvalidArgument, "RecoverTask without a handle")
	}
	if h.Config == nil {
		h.Config = &TaskConfig{ID: req.GetTaskId()}
	}
	return &driverpb.RecoverTaskResponse{}, toStatus(s.impl.RecoverTask(ctx, h))
}

func (s *driverServer) WaitTask(ctx context.Context, req *driverpb.WaitTaskRequest) (*driverpb.WaitTaskResponse, error) {
	ch, err := s.impl.WaitTask(ctx, req.GetTaskId())
	if err != nil {
		return nil, toStatus(err)
	}
	select {
	case <-ctx.Done():
		return nil, status.Error(codes.DeadlineExceeded, "wait cancelled by the client")
	case r, ok := <-ch:
		if !ok || r == nil {
			return &driverpb.WaitTaskResponse{Err: "task wait ended without a result"}, nil
		}
		resp := &driverpb.WaitTaskResponse{Result: ExitResultToProto(r)}
		if r.Err != nil {
			resp.Err = r.Err.Error()
		}
		return resp, nil
	}
}

func (s *driverServer) StopTask(ctx context.Context, req *driverpb.StopTaskRequest) (*driverpb.StopTaskResponse, error) {
	timeout := req.GetTimeout().AsDuration()
	return &driverpb.StopTaskResponse{}, toStatus(s.impl.StopTask(ctx, req.GetTaskId(), timeout, req.GetSignal()))
}

func (s *driverServer) DestroyTask(ctx context.Context, req *driverpb.DestroyTaskRequest) (*driverpb.DestroyTaskResponse, error) {
	return &driverpb.DestroyTaskResponse{}, toStatus(s.impl.DestroyTask(ctx, req.GetTaskId(), req.GetForce()))
}

func (s *driverServer) InspectTask(ctx context.Context, req *driverpb.InspectTaskRequest) (*driverpb.InspectTaskResponse, error) {
	st, err := s.impl.InspectTask(ctx, req.GetTaskId())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &driverpb.InspectTaskResponse{
		Task: &driverpb.TaskStatus{
			Id: st.ID, Name: st.Name, State: driverpb.TaskState(st.State),
			Result: ExitResultToProto(st.Result),
		},
		Driver:          &driverpb.TaskDriverStatus{Attributes: st.Attributes},
		NetworkOverride: NetworkOverrideToProto(st.Network),
	}
	if !st.StartedAt.IsZero() {
		resp.Task.StartedAt = timestampOf(st.StartedAt)
	}
	if !st.CompletedAt.IsZero() {
		resp.Task.CompletedAt = timestampOf(st.CompletedAt)
	}
	return resp, nil
}

func (s *driverServer) TaskStats(req *driverpb.TaskStatsRequest, stream driverpb.Driver_TaskStatsServer) error {
	ctx := stream.Context()
	interval := req.GetCollectionInterval().AsDuration()
	if interval <= 0 {
		return status.Error(codes.InvalidArgument, "TaskStats needs a positive collection interval")
	}
	ch, err := s.impl.TaskStats(ctx, req.GetTaskId(), interval)
	if err != nil {
		return toStatus(err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-ch:
			if !ok {
				return nil
			}
			if err := stream.Send(&driverpb.TaskStatsResponse{Stats: TaskUsageToProto(req.GetTaskId(), u)}); err != nil {
				return nil //nolint:nilerr // the client went away
			}
		}
	}
}

func (s *driverServer) SignalTask(ctx context.Context, req *driverpb.SignalTaskRequest) (*driverpb.SignalTaskResponse, error) {
	return &driverpb.SignalTaskResponse{}, toStatus(s.impl.SignalTask(ctx, req.GetTaskId(), req.GetSignal()))
}

func (s *driverServer) ExecTask(ctx context.Context, req *driverpb.ExecTaskRequest) (*driverpb.ExecTaskResponse, error) {
	if len(req.GetCommand()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "ExecTask needs a command")
	}
	res, err := s.impl.ExecTask(ctx, req.GetTaskId(), req.GetCommand(), req.GetTimeout().AsDuration())
	if err != nil {
		return nil, toStatus(err)
	}
	return &driverpb.ExecTaskResponse{Stdout: res.Stdout, Stderr: res.Stderr, Result: ExitResultToProto(&res.Exit)}, nil
}

// streamWriter sends one output stream of an exec as response frames.
type streamWriter struct {
	mu     *sync.Mutex
	stream driverpb.Driver_ExecTaskStreamingServer
	stderr bool
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	data := make([]byte, len(p))
	copy(data, p)
	resp := &driverpb.ExecStreamResponse{}
	if w.stderr {
		resp.Stderr = &driverpb.ExecIO{Data: data}
	} else {
		resp.Stdout = &driverpb.ExecIO{Data: data}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.stream.Send(resp); err != nil {
		return 0, fmt.Errorf("sending exec output: %w", err)
	}
	return len(p), nil
}

func (s *driverServer) ExecTaskStreaming(stream driverpb.Driver_ExecTaskStreamingServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "exec stream ended before its setup frame: %v", err)
	}
	setup := first.GetSetup()
	if setup == nil || len(setup.GetCommand()) == 0 {
		return status.Error(codes.InvalidArgument, "the first exec frame must be a setup with a command")
	}
	stdinR, stdinW := io.Pipe()
	resize := make(chan TermSize, 4)
	go func() {
		defer close(resize)
		for {
			msg, err := stream.Recv()
			if err != nil {
				_ = stdinW.Close()
				return
			}
			if ts := msg.GetTtySize(); ts != nil {
				select {
				case resize <- TermSize{Height: int(ts.GetHeight()), Width: int(ts.GetWidth())}:
				default:
				}
			}
			if in := msg.GetStdin(); in != nil {
				if len(in.GetData()) > 0 {
					if _, err := stdinW.Write(in.GetData()); err != nil {
						return
					}
				}
				if in.GetClose() {
					_ = stdinW.Close()
				}
			}
		}
	}()
	mu := &sync.Mutex{}
	res, err := s.impl.ExecTaskStreaming(ctx, &ExecRequest{
		TaskID:  setup.GetTaskId(),
		Command: setup.GetCommand(),
		TTY:     setup.GetTty(),
		Stdin:   stdinR,
		Stdout:  &streamWriter{mu: mu, stream: stream},
		Stderr:  &streamWriter{mu: mu, stream: stream, stderr: true},
		Resize:  resize,
	})
	_ = stdinR.Close()
	if err != nil {
		return toStatus(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if err := stream.Send(&driverpb.ExecStreamResponse{
		Stdout: &driverpb.ExecIO{Close: true},
		Stderr: &driverpb.ExecIO{Close: true},
	}); err != nil {
		return nil //nolint:nilerr // the client went away
	}
	_ = stream.Send(&driverpb.ExecStreamResponse{Exited: true, Result: ExitResultToProto(res)})
	return nil
}

func (s *driverServer) CreateNetwork(context.Context, *driverpb.CreateNetworkRequest) (*driverpb.CreateNetworkResponse, error) {
	return nil, status.Error(codes.Unimplemented, "bedrock lets the Nomad client create network namespaces")
}

func (s *driverServer) DestroyNetwork(context.Context, *driverpb.DestroyNetworkRequest) (*driverpb.DestroyNetworkResponse, error) {
	return nil, status.Error(codes.Unimplemented, "bedrock lets the Nomad client destroy network namespaces")
}
