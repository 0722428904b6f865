package driver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	"github.com/docker/go-units"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
)

// pullProgressEvery is how often a running pull reports progress as a task
// event.
const pullProgressEvery = 2 * time.Second

// normalizeImage returns the reference Docker should use: the familiar
// form with an explicit tag (":latest" when none), as `docker run` does.
func normalizeImage(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fieldError("image", "%q is not a valid image reference: %v", ref, err)
	}
	return reference.FamiliarString(reference.TagNameOnly(named)), nil
}

// ensureImage makes the image available locally and returns its id. A
// local image is used as is unless force_pull is set; pulls report
// progress as task events and are bounded by the pull timeout.
func (d *Driver) ensureImage(ctx context.Context, h *taskHandle, tc *TaskConfig) (ref, id string, pulled bool, err error) {
	ref, err = normalizeImage(tc.Image)
	if err != nil {
		return "", "", false, err
	}
	cli, err := d.client()
	if err != nil {
		return "", "", false, plugin.NewRecoverableError(err)
	}
	if !tc.ForcePull {
		info, err := cli.ImageInspect(ctx, ref)
		if err == nil {
			return ref, info.ID, false, nil
		}
		if !cerrdefs.IsNotFound(err) {
			return "", "", false, plugin.NewRecoverableError(fmt.Errorf("inspecting image %s: %w", ref, err))
		}
	}
	auth, err := d.registryAuth(ref, tc)
	if err != nil {
		return "", "", false, err
	}
	timeout := tc.pullTimeout(d.settings().pullTimeout)
	d.emit(h, "Pulling image %s", ref)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := d.pull(pctx, cli, h, ref, auth); err != nil {
		if errors.Is(pctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			return "", "", false, plugin.NewRecoverableError(fmt.Errorf("pulling image %s: no result within %s (%s/image_pull_timeout)", ref, timeout, configAttrPullTimeout))
		}
		return "", "", false, err
	}
	info, err := cli.ImageInspect(ctx, ref)
	if err != nil {
		return "", "", false, plugin.NewRecoverableError(fmt.Errorf("image %s pulled but not found: %w", ref, err))
	}
	d.emit(h, "Pulled image %s", ref)
	return ref, info.ID, true, nil
}

// pull runs one image pull and classifies its failure: a reference that
// does not exist or credentials that are refused need the user to change
// the job (fatal); anything else (network, registry hiccups) is retried.
func (d *Driver) pull(ctx context.Context, cli *client.Client, h *taskHandle, ref, auth string) error {
	rc, err := cli.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth})
	if err != nil {
		return classifyPullError(ref, err)
	}
	defer func() { _ = rc.Close() }()
	dec := json.NewDecoder(rc)
	layers := map[string][2]int64{}
	last := time.Now()
	for {
		var msg struct {
			Status   string `json:"status"`
			ID       string `json:"id"`
			Progress *struct {
				Current int64 `json:"current"`
				Total   int64 `json:"total"`
			} `json:"progressDetail"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("pulling image %s: %w", ref, ctx.Err())
			}
			return plugin.NewRecoverableError(fmt.Errorf("pulling image %s: reading progress: %w", ref, err))
		}
		if msg.ErrorDetail != nil || msg.Error != "" {
			m := msg.Error
			if msg.ErrorDetail != nil && msg.ErrorDetail.Message != "" {
				m = msg.ErrorDetail.Message
			}
			return classifyPullError(ref, errors.New(m))
		}
		if msg.ID != "" && msg.Progress != nil && msg.Progress.Total > 0 && strings.HasPrefix(msg.Status, "Downloading") {
			layers[msg.ID] = [2]int64{msg.Progress.Current, msg.Progress.Total}
		}
		if time.Since(last) >= pullProgressEvery && len(layers) > 0 {
			var cur, total int64
			for _, l := range layers {
				cur += l[0]
				total += l[1]
			}
			d.emit(h, "Pulling image %s: %s of %s", ref, units.HumanSize(float64(cur)), units.HumanSize(float64(total)))
			last = time.Now()
		}
	}
}

func classifyPullError(ref string, err error) error {
	msg := strings.ToLower(err.Error())
	switch {
	case cerrdefs.IsUnauthorized(err) || cerrdefs.IsPermissionDenied(err) ||
		strings.Contains(msg, "unauthorized") || strings.Contains(msg, "authentication required") ||
		strings.Contains(msg, "incorrect username or password"):
		return plugin.NewFatalError(fmt.Errorf("pulling image %s: the registry refused the credentials (check auth/auth_file): %w", ref, err))
	case cerrdefs.IsNotFound(err) || strings.Contains(msg, "manifest unknown") || strings.Contains(msg, "not found") ||
		strings.Contains(msg, "pull access denied") || strings.Contains(msg, "does not exist"):
		return plugin.NewFatalError(fmt.Errorf("pulling image %s: image not found in the registry (check the name and tag, and credentials for private images): %w", ref, err))
	case cerrdefs.IsInvalidArgument(err) || strings.Contains(msg, "invalid reference"):
		return plugin.NewFatalError(fmt.Errorf("pulling image %s: %w", ref, err))
	default:
		return plugin.NewRecoverableError(fmt.Errorf("pulling image %s: registry not reachable or failing: %w", ref, err))
	}
}

// registryAuth returns the X-Registry-Auth header for ref: the task's auth
// block, else its auth_file, else the plugin's auth_config; "" when none
// applies. Only credentials for the image's registry are used.
func (d *Driver) registryAuth(ref string, tc *TaskConfig) (string, error) {
	if tc.Auth != nil {
		enc, err := registry.EncodeAuthConfig(registry.AuthConfig{
			// email is accepted for compatibility with Nomad's docker
			// driver; registries have not used it since Docker 1.11.
			Username: tc.Auth.Username, Password: tc.Auth.Password, ServerAddress: tc.Auth.ServerAddress,
		})
		if err != nil {
			return "", fieldError("auth", "cannot encode credentials: %v", err)
		}
		return enc, nil
	}
	file, field := tc.AuthFile, "auth_file"
	if file == "" {
		file, field = d.settings().authConfig, "auth_config"
	}
	if file == "" {
		return "", nil
	}
	ac, err := authFromDockerConfig(file, ref)
	if err != nil {
		return "", fieldError(field, "%v", err)
	}
	if ac == nil {
		return "", nil
	}
	enc, err := registry.EncodeAuthConfig(*ac)
	if err != nil {
		return "", fieldError(field, "cannot encode credentials: %v", err)
	}
	return enc, nil
}

// authFromDockerConfig reads credentials for ref's registry from a Docker
// config.json ("auths" entries; credential helpers are not run).
func authFromDockerConfig(file, ref string) (*registry.AuthConfig, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("%s is not a Docker config.json: %w", file, err)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference: %w", err)
	}
	host := reference.Domain(named)
	candidates := []string{host, "https://" + host, "http://" + host, "https://" + host + "/v1/", "https://" + host + "/v2/"}
	if host == "docker.io" {
		candidates = append([]string{"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"}, candidates...)
	}
	for _, key := range candidates {
		e, ok := cfg.Auths[key]
		if !ok {
			continue
		}
		ac := &registry.AuthConfig{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken, ServerAddress: host}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("%s: auths[%q].auth is not base64", file, key)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("%s: auths[%q].auth is not user:password", file, key)
			}
			ac.Username, ac.Password = user, pass
		}
		return ac, nil
	}
	return nil, nil
}

// imageGC removes an image some time after the last task using it ended,
// if the plugin config asks for it (gc.image, gc.image_delay). Policy:
// only images bedrock itself pulled are removed, by the reference it
// pulled (an untag; the engine deletes the layers when no tag or container
// is left): images built or pulled on the node by someone else are the
// operator's. Removal without force fails while any container uses the
// image, which is what we want.
type imageGC struct {
	d       *Driver
	mu      sync.Mutex
	users   map[string]int
	pending map[string]*time.Timer
}

func newImageGC(d *Driver) *imageGC {
	return &imageGC{d: d, users: map[string]int{}, pending: map[string]*time.Timer{}}
}

// acquire records a task using ref and cancels a pending removal.
func (g *imageGC) acquire(ref string) {
	if ref == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.users[ref]++
	if t := g.pending[ref]; t != nil {
		t.Stop()
		delete(g.pending, ref)
	}
}

// release records a task no longer using ref; the last user of an image
// bedrock pulled schedules its removal.
func (g *imageGC) release(ref string, pulled bool) {
	if ref == "" {
		return
	}
	s := g.d.settings()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.users[ref] > 0 {
		g.users[ref]--
	}
	if g.users[ref] > 0 {
		return
	}
	delete(g.users, ref)
	if !pulled || !s.gcImage {
		return
	}
	if t := g.pending[ref]; t != nil {
		t.Stop()
	}
	g.pending[ref] = time.AfterFunc(s.gcImageDelay, func() { g.remove(ref) })
}

func (g *imageGC) remove(ref string) {
	g.mu.Lock()
	if g.users[ref] > 0 {
		g.mu.Unlock()
		return
	}
	delete(g.pending, ref)
	g.mu.Unlock()
	cli, err := g.d.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(g.d.ctx, 30*time.Second)
	defer cancel()
	if _, err := cli.ImageRemove(ctx, ref, image.RemoveOptions{PruneChildren: true}); err != nil {
		g.d.logger.Debug("image not removed", "image", ref, "error", err)
		return
	}
	g.d.logger.Info("removed unused image", "image", ref)
}
