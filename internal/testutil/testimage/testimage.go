// Package testimage builds, once per content, the local Docker image tests
// run: FROM scratch with the static e2e/testapp binary and a static busybox
// (Debian's busybox-static package) so `sh`, `stty` and friends exist for
// exec tests. No registry is involved; the image is tagged by a hash of its
// content, so a repeated build is a cache hit.
package testimage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/client"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// Repository is the image name; the tag is the content hash.
const Repository = "bedrock-testapp"

// BusyboxPath is where Debian's busybox-static installs its binary.
const BusyboxPath = "/bin/busybox"

const dockerfile = `FROM scratch
COPY rootfs/ /
ENV PATH=/bin
CMD ["/testapp", "serve"]
`

var (
	once   sync.Once
	result string
	errRes error
)

// Build returns the tag of the test image, building it if needed. It
// needs the Go toolchain, /bin/busybox (apt-get install busybox-static)
// and a Docker engine.
func Build(ctx context.Context) (string, error) {
	once.Do(func() { result, errRes = buildImage(ctx) })
	return result, errRes
}

func buildImage(ctx context.Context) (string, error) {
	busybox, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return "", fmt.Errorf("test image needs a static busybox at %s (Debian: apt-get install busybox-static): %w", BusyboxPath, err)
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "bedrock-testapp-")
	if err != nil {
		return "", fmt.Errorf("temp dir: %w", err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	bin := filepath.Join(dir, "testapp")
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w", "-o", bin, "./e2e/testapp")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building e2e/testapp: %w: %s", err, out)
	}
	app, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("reading testapp: %w", err)
	}
	applets, err := busyboxApplets(bctx)
	if err != nil {
		return "", err
	}

	h := sha256.New()
	for _, part := range [][]byte{[]byte(dockerfile), app, busybox, []byte(strings.Join(applets, ","))} {
		_, _ = fmt.Fprintf(h, "%d:", len(part))
		_, _ = h.Write(part)
	}
	tag := Repository + ":" + hex.EncodeToString(h.Sum(nil))[:16]

	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return "", fmt.Errorf("docker client: %w", err)
	}
	defer func() { _ = cli.Close() }()
	if _, err := cli.ImageInspect(bctx, tag); err == nil {
		return tag, nil
	}
	tarball, err := buildContext(app, busybox, applets)
	if err != nil {
		return "", err
	}
	resp, err := cli.ImageBuild(bctx, bytes.NewReader(tarball), build.ImageBuildOptions{
		Tags: []string{tag}, Remove: true, ForceRemove: true, Dockerfile: "Dockerfile",
	})
	if err != nil {
		return "", fmt.Errorf("docker build: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	dec := json.NewDecoder(resp.Body)
	for {
		var msg struct {
			Stream string `json:"stream"`
			Error  string `json:"error"`
		}
		if err := dec.Decode(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return "", fmt.Errorf("docker build output: %w", err)
		}
		if msg.Error != "" {
			return "", fmt.Errorf("docker build: %s", msg.Error)
		}
	}
	if _, err := cli.ImageInspect(bctx, tag); err != nil {
		return "", fmt.Errorf("built image %s not found: %w", tag, err)
	}
	return tag, nil
}

func busyboxApplets(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}
	return applets, nil
}

// buildContext lays out rootfs/: /testapp, /bin/busybox with a symlink per
// applet, /tmp, and a minimal /etc/passwd and /etc/group (user tests).
func buildContext(app, busybox []byte, applets []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Unix(0, 0)
	add := func(hdr *tar.Header, body []byte) error {
		hdr.ModTime = now
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar %s: %w", hdr.Name, err)
		}
		if len(body) > 0 {
			if _, err := tw.Write(body); err != nil {
				return fmt.Errorf("tar %s: %w", hdr.Name, err)
			}
		}
		return nil
	}
	files := []struct {
		hdr  *tar.Header
		body []byte
	}{
		{&tar.Header{Name: "Dockerfile", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(dockerfile)},
		{&tar.Header{Name: "rootfs/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{&tar.Header{Name: "rootfs/bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{&tar.Header{Name: "rootfs/etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{&tar.Header{Name: "rootfs/tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil},
		{&tar.Header{Name: "rootfs/data/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{&tar.Header{Name: "rootfs/testapp", Typeflag: tar.TypeReg, Mode: 0o755}, app},
		{&tar.Header{Name: "rootfs/bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, busybox},
		{&tar.Header{Name: "rootfs/etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n")},
		{&tar.Header{Name: "rootfs/etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, f := range files {
		if err := add(f.hdr, f.body); err != nil {
			return nil, err
		}
	}
	for _, a := range applets {
		if err := add(&tar.Header{Name: "rootfs/bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar: %w", err)
	}
	return buf.Bytes(), nil
}
