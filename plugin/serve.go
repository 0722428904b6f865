package plugin

import (
	"context"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/basepb"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// Protocol facts shared by every Nomad plugin and its client.
const (
	// MagicCookieKey and MagicCookieValue are set by the client in the
	// plugin's environment; a binary without them was started by hand.
	MagicCookieKey   = "NOMAD_PLUGIN_MAGIC_COOKIE"
	MagicCookieValue = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255"
	// ProtocolVersion is go-plugin's application protocol version for Nomad.
	ProtocolVersion = 2
	// APIVersion is the driver plugin API version we implement.
	APIVersion = "v0.1.0"
	// SetBase and SetDriver are the plugin-set names the client dispenses.
	SetBase   = "base"
	SetDriver = "driver"
)

// Handshake is go-plugin's handshake configuration for Nomad plugins.
func Handshake() goplugin.HandshakeConfig {
	return goplugin.HandshakeConfig{
		ProtocolVersion:  ProtocolVersion,
		MagicCookieKey:   MagicCookieKey,
		MagicCookieValue: MagicCookieValue,
	}
}

// LaunchedByNomad reports whether a Nomad client (or our harness) started
// this process as a plugin.
func LaunchedByNomad() bool {
	return os.Getenv(MagicCookieKey) == MagicCookieValue
}

// Serve runs the plugin until the client kills it. It writes the handshake
// line to stdout; the caller must not have written anything there before.
func Serve(impl Driver, logger hclog.Logger) {
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake(),
		Plugins: goplugin.PluginSet{
			SetBase:   &grpcPlugin{register: func(s *grpc.Server) { basepb.RegisterBasePluginServer(s, &baseServer{impl: impl, logger: logger}) }},
			SetDriver: &grpcPlugin{register: func(s *grpc.Server) { driverpb.RegisterDriverServer(s, &driverServer{impl: impl, logger: logger}) }},
		},
		GRPCServer: goplugin.DefaultGRPCServer,
		Logger:     logger,
	})
}

// grpcPlugin adapts a service registration to go-plugin's GRPCPlugin. The
// client side is never used: the harness dials the services itself.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	register func(*grpc.Server)
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	p.register(s)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (interface{}, error) {
	return nil, nil
}

func timestampOf(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
