package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/docker/docker/client"
	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/proto/hclspecpb"
)

// Name is the driver name jobs use in `driver = "bedrock"`.
const Name = "bedrock"

// Version is the plugin's semver, reported to Nomad and as a node
// attribute. main sets it from its build-time version.
var Version = "0.1.0-dev"

// Driver implements plugin.Driver on the Docker Engine.
type Driver struct {
	logger hclog.Logger
	events *eventBroker
	// placement caches the placement policy for the current settings.
	placement placementGuard

	mu     sync.RWMutex
	cfg    *settings
	docker *client.Client
	tasks  map[string]*taskHandle

	// ctx lives as long as the plugin; background work hangs off it.
	ctx    context.Context
	cancel context.CancelFunc

	initOnce  sync.Once
	images    *imageGC
	reconcile *reconciler
}

// New returns a driver that does nothing until Nomad configures it.
func New(logger hclog.Logger) plugin.Driver {
	return newDriver(logger)
}

func newDriver(logger hclog.Logger) *Driver {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Driver{
		logger: logger.Named(Name),
		events: newEventBroker(),
		tasks:  map[string]*taskHandle{},
		ctx:    ctx,
		cancel: cancel,
	}
	d.images = newImageGC(d)
	d.reconcile = newReconciler(d)
	return d
}

// Info names the driver; Version is set by main before serving.
func (d *Driver) Info() plugin.Info {
	return plugin.Info{Name: Name, Version: Version}
}

// ConfigSchema describes the plugin block.
func (d *Driver) ConfigSchema() *hclspecpb.Spec { return configSpec() }

// TaskConfigSchema describes the task config block.
func (d *Driver) TaskConfigSchema() *hclspecpb.Spec { return taskConfigSpec() }

// SetConfig validates the plugin block and, on success only, replaces the
// current settings and Docker client: a refused config changes nothing.
func (d *Driver) SetConfig(_ context.Context, cfg *plugin.PluginConfig) error {
	var raw []byte
	if cfg != nil {
		raw = cfg.Msgpack
	}
	s, err := parsePluginConfig(raw)
	if err != nil {
		return plugin.NewFatalError(err)
	}
	cli, err := newDockerClient(s)
	if err != nil {
		return plugin.NewFatalError(err)
	}
	d.mu.Lock()
	old := d.docker
	d.cfg, d.docker = s, cli
	d.mu.Unlock()
	if old != nil {
		// Streams already running keep their own reference; Close only
		// drops idle connections.
		_ = old.Close()
	}
	d.logger.Debug("configured", "docker_endpoint", s.endpoint)
	// Nomad configures its plugins before it restores allocations: dead capture mounts
	// must be gone by then (capturemount.go).
	d.reapDeadCaptureMounts()
	return nil
}

// settings returns the current configuration, defaults when Nomad never
// sent any (after an agent restart it re-attaches without SetConfig, but
// the process kept its settings; a fresh process always gets SetConfig).
func (d *Driver) settings() *settings {
	d.mu.RLock()
	s := d.cfg
	d.mu.RUnlock()
	if s != nil {
		return s
	}
	s, err := parsePluginConfig(nil)
	if err != nil { // cannot happen with no config unless DOCKER_HOST is bad
		s = &settings{endpoint: defaultDockerSocket, pullTimeout: defaultPullTimeout}
	}
	return s
}

// client returns the Docker client, creating one with the defaults when
// SetConfig was never called.
func (d *Driver) client() (*client.Client, error) {
	d.mu.RLock()
	cli := d.docker
	d.mu.RUnlock()
	if cli != nil {
		return cli, nil
	}
	s := d.settings()
	cli, err := newDockerClient(s)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.docker != nil {
		_ = cli.Close()
		return d.docker, nil
	}
	d.cfg, d.docker = s, cli
	return cli, nil
}

// Capabilities tells Nomad what bedrock supports.
func (d *Driver) Capabilities() *plugin.Capabilities {
	return &plugin.Capabilities{
		SendSignals:  true,
		Exec:         true,
		FSIsolation:  plugin.FSIsolationImage,
		NetworkModes: []plugin.NetworkMode{plugin.NetworkModeHost, plugin.NetworkModeGroup},
	}
}

// Init starts the background work (image GC, dangling-container
// reconciliation) once; later calls, e.g. after an agent re-attaches, are
// no-ops.
func (d *Driver) Init(context.Context) error {
	d.initOnce.Do(func() {
		go d.reconcile.run(d.ctx)
	})
	return nil
}

// Shutdown stops background work. Running containers and their log
// followers are left alone: Nomad may start a new plugin that recovers
// them.
func (d *Driver) Shutdown(context.Context) error {
	d.cancel()
	d.events.close()
	return nil
}

// TaskEvents subscribes to the task event stream until ctx ends.
func (d *Driver) TaskEvents(ctx context.Context) (<-chan *plugin.TaskEvent, error) {
	return d.events.subscribe(ctx), nil
}

// emit publishes a task event; slow subscribers miss events rather than
// stall a task.
func (d *Driver) emit(h *taskHandle, format string, args ...any) {
	if h == nil {
		return
	}
	d.events.publish(&plugin.TaskEvent{
		TaskID:    h.taskID,
		AllocID:   h.allocID,
		TaskName:  h.taskName,
		Timestamp: time.Now(),
		Message:   fmt.Sprintf(format, args...),
	})
}

func (d *Driver) handle(id string) *taskHandle {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.tasks[id]
}

func (d *Driver) storeHandle(h *taskHandle) {
	d.mu.Lock()
	d.tasks[h.taskID] = h
	d.mu.Unlock()
}

func (d *Driver) removeHandle(id string) {
	d.mu.Lock()
	delete(d.tasks, id)
	d.mu.Unlock()
}

// handleOfContainer returns the tracked task running in a container.
func (d *Driver) handleOfContainer(id string) *taskHandle {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, h := range d.tasks {
		if h.containerID == id {
			return h
		}
	}
	return nil
}

// knownContainers returns the container ids of all tracked tasks.
func (d *Driver) knownContainers() map[string]bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make(map[string]bool, len(d.tasks))
	for _, h := range d.tasks {
		out[h.containerID] = true
	}
	return out
}

// errTaskNotFound is returned for operations on ids the driver does not
// track (lifecycle calls that must be idempotent treat it as success).
var errTaskNotFound = errors.New("task not found")

func (d *Driver) mustHandle(id string) (*taskHandle, error) {
	h := d.handle(id)
	if h == nil {
		return nil, fmt.Errorf("%w: %s", errTaskNotFound, id)
	}
	return h, nil
}

// eventBroker fans task events out to every TaskEvents stream.
type eventBroker struct {
	mu     sync.Mutex
	subs   map[chan *plugin.TaskEvent]struct{}
	closed bool
}

func newEventBroker() *eventBroker {
	return &eventBroker{subs: map[chan *plugin.TaskEvent]struct{}{}}
}

func (b *eventBroker) subscribe(ctx context.Context) <-chan *plugin.TaskEvent {
	ch := make(chan *plugin.TaskEvent, 64)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		// Keep the stream open until cancelled, never an early end.
		go func() { <-ctx.Done(); close(ch) }()
		return ch
	}
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		if _, ok := b.subs[ch]; ok {
			delete(b.subs, ch)
			close(ch)
		}
		b.mu.Unlock()
	}()
	return ch
}

func (b *eventBroker) publish(ev *plugin.TaskEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// close marks the broker closed; open streams stay open until their
// contexts end, as Nomad expects.
func (b *eventBroker) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}
