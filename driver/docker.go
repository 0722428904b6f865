package driver

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/docker/docker/client"
)

// newDockerClient connects lazily to the configured engine. The API version
// is negotiated on first use, so one binary works with Debian's 20.10
// engine (API 1.41) and newer ones.
func newDockerClient(s *settings) (*client.Client, error) {
	opts := []client.Opt{
		client.WithHost(hostForClient(s.endpoint)),
		client.WithAPIVersionNegotiation(),
	}
	if s.tls != nil && (s.tls.CAFile != "" || s.tls.CertFile != "") {
		opts = append(opts, client.WithTLSClientConfig(s.tls.CAFile, s.tls.CertFile, s.tls.KeyFile))
	} else if !strings.HasPrefix(s.endpoint, "unix://") {
		// A plain HTTP client for tcp:// without TLS; the default one would
		// try to read DOCKER_CERT_PATH.
		opts = append(opts, client.WithHTTPClient(&http.Client{Transport: &http.Transport{IdleConnTimeout: 90 * time.Second}}))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %q: %w", configAttrEndpoint, s.endpoint, err)
	}
	return cli, nil
}

// hostForClient maps http(s):// to the tcp:// form the Docker client
// expects.
func hostForClient(ep string) string {
	switch {
	case strings.HasPrefix(ep, "http://"):
		return "tcp://" + strings.TrimPrefix(ep, "http://")
	case strings.HasPrefix(ep, "https://"):
		return "tcp://" + strings.TrimPrefix(ep, "https://")
	}
	return ep
}
