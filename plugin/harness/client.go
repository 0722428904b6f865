package harness

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2/hcldec"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/hclspec"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/basepb"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/driverpb"
)

// The loopback port range a client reserves for plugin subsystems, as the
// recorded Nomad 2.0.5 client sent it.
const (
	clientMinPort = 14000
	clientMaxPort = 14512
)

var semverRE = regexp.MustCompile(`^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// Client is one simulated Nomad client agent with its long-lived plugin.
type Client struct {
	opts      Options
	pluginHCL string

	// Plugin is the long-lived plugin instance.
	Plugin *Plugin
	// Info is what the plugin reported on the catalog launch.
	Info *basepb.PluginInfoResponse
	// ConfigSpec and TaskSpec are the plugin's schemas as hcldec specs.
	ConfigSpec hcldec.Spec
	TaskSpec   hcldec.Spec
	// Capabilities as reported after Init.
	Capabilities *driverpb.Capabilities

	configMsgpack []byte
}

// StartAgent performs what a Nomad client does at agent start: a catalog
// launch (PluginInfo, ConfigSchema), a validation launch (SetConfig twice
// without nomad_config), then the long-lived launch (SetConfig with
// nomad_config, Init, TaskConfigSchema, Capabilities). pluginHCL is the body
// of the agent's `plugin "..." { config { ... } }` block.
func StartAgent(ctx context.Context, opts Options, pluginHCL string) (*Client, error) {
	c := &Client{opts: opts, pluginHCL: pluginHCL}

	// 1. Catalog launch.
	p, err := Launch(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("catalog launch: %w", err)
	}
	info, err := p.Base.PluginInfo(ctx, &basepb.PluginInfoRequest{})
	if err == nil {
		err = CheckPluginInfo(info)
	}
	if err != nil {
		p.Close(ctx)
		return nil, fmt.Errorf("catalog launch: PluginInfo: %w", err)
	}
	c.Info = info
	schema, err := p.Base.ConfigSchema(ctx, &basepb.ConfigSchemaRequest{})
	if err != nil {
		p.Close(ctx)
		return nil, fmt.Errorf("catalog launch: ConfigSchema: %w", err)
	}
	p.Close(ctx)
	if c.ConfigSpec, err = hclspec.ToHCLDec(schema.GetSpec()); err != nil {
		return nil, fmt.Errorf("plugin config schema does not convert with hcldec: %w", err)
	}
	if c.configMsgpack, err = EncodeHCL(c.ConfigSpec, "plugin config", pluginHCL, nil); err != nil {
		return nil, err
	}

	// 2. Validation launch: the recorded client sends SetConfig twice.
	p, err = Launch(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("validation launch: %w", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := p.Base.SetConfig(ctx, &basepb.SetConfigRequest{MsgpackConfig: c.configMsgpack, PluginApiVersion: plugin.APIVersion}); err != nil {
			p.Close(ctx)
			return nil, fmt.Errorf("validation launch: SetConfig: %w", err)
		}
	}
	p.Close(ctx)

	// 3. The long-lived instance.
	p, err = Launch(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("plugin launch: %w", err)
	}
	c.Plugin = p
	if err := c.configure(ctx); err != nil {
		p.Close(ctx)
		return nil, err
	}
	return c, nil
}

// configure does what the client does with a freshly launched long-lived
// plugin.
func (c *Client) configure(ctx context.Context) error {
	p := c.Plugin
	if _, err := p.Base.SetConfig(ctx, &basepb.SetConfigRequest{
		MsgpackConfig:    c.configMsgpack,
		NomadConfig:      &basepb.AgentConfig{Driver: &basepb.AgentDriverConfig{ClientMaxPort: clientMaxPort, ClientMinPort: clientMinPort}},
		PluginApiVersion: plugin.APIVersion,
	}); err != nil {
		return fmt.Errorf("SetConfig: %w", err)
	}
	return c.initAttached(ctx)
}

func (c *Client) initAttached(ctx context.Context) error {
	p := c.Plugin
	if _, err := p.Driver.Init(ctx, &driverpb.InitRequest{}); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	ts, err := p.Driver.TaskConfigSchema(ctx, &driverpb.TaskConfigSchemaRequest{})
	if err != nil {
		return fmt.Errorf("TaskConfigSchema: %w", err)
	}
	if c.TaskSpec, err = hclspec.ToHCLDec(ts.GetSpec()); err != nil {
		return fmt.Errorf("task config schema does not convert with hcldec: %w", err)
	}
	caps, err := p.Driver.Capabilities(ctx, &driverpb.CapabilitiesRequest{})
	if err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	c.Capabilities = caps.GetCapabilities()
	return nil
}

// RestartAgent simulates the client agent being killed and started again
// while the plugin keeps running: it re-attaches to the same process (no
// SetConfig), calls Init, and runs its own validation launch as the
// recorded client did. Tasks must then be recovered with RecoverTask.
func (c *Client) RestartAgent(ctx context.Context) error {
	r := c.Plugin.Detach()
	p, err := ReattachTo(r)
	if err != nil {
		return err
	}
	c.Plugin = p
	if err := c.initAttached(ctx); err != nil {
		return err
	}
	v, err := Launch(ctx, c.opts)
	if err != nil {
		return fmt.Errorf("validation launch after restart: %w", err)
	}
	defer v.Close(ctx)
	for i := 0; i < 2; i++ {
		if _, err := v.Base.SetConfig(ctx, &basepb.SetConfigRequest{MsgpackConfig: c.configMsgpack, PluginApiVersion: plugin.APIVersion}); err != nil {
			return fmt.Errorf("validation launch after restart: SetConfig: %w", err)
		}
	}
	return nil
}

// CrashPlugin kills the plugin with SIGKILL and launches a new one the way
// the client does after a plugin crash (SetConfig with nomad_config, Init).
// Tasks must then be recovered with RecoverTask.
func (c *Client) CrashPlugin(ctx context.Context) error {
	c.Plugin.Kill()
	p, err := Launch(ctx, c.opts)
	if err != nil {
		return fmt.Errorf("relaunch after crash: %w", err)
	}
	c.Plugin = p
	return c.configure(ctx)
}

// Stop shuts the agent down as Nomad does: Shutdown, then stop the plugin.
func (c *Client) Stop(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = c.Plugin.Driver.Shutdown(ctx, &driverpb.ShutdownRequest{})
	c.Plugin.Close(ctx)
}

// CheckPluginInfo applies the checks a client makes before using a plugin.
func CheckPluginInfo(info *basepb.PluginInfoResponse) error {
	if info.GetType() != basepb.PluginType_DRIVER {
		return fmt.Errorf("plugin type %v, want DRIVER", info.GetType())
	}
	if !slices.Contains(info.GetPluginApiVersions(), plugin.APIVersion) {
		return fmt.Errorf("plugin API versions %v do not include %s", info.GetPluginApiVersions(), plugin.APIVersion)
	}
	if !semverRE.MatchString(info.GetPluginVersion()) {
		return fmt.Errorf("plugin version %q is not semver", info.GetPluginVersion())
	}
	if info.GetName() == "" {
		return errors.New("plugin has no name")
	}
	return nil
}
