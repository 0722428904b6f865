package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// ack is a write the master acknowledged.
type ack struct {
	name, content string
	addr          string
	at            time.Time
}

// client is the demo's user: it finds the master the way an app's users do, through Consul
// (the service instance tagged "master", passing its checks), and writes a numbered file
// through it every interval, re-resolving whenever a write fails.
type client struct {
	consul  *api.Client
	service string
	http    *http.Client

	mu     sync.Mutex
	acks   []ack
	failed int
}

func newClient(consulAddr, service string) (*client, error) {
	c, err := api.NewClient(&api.Config{Address: consulAddr})
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return &client{consul: c, service: service, http: &http.Client{Timeout: 500 * time.Millisecond}}, nil
}

// masters returns the addresses Consul gives for the master tag.
func (c *client) masters(ctx context.Context) []string {
	entries, _, err := c.consul.Health().Service(c.service, "master", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		host := e.Service.Address
		if host == "" {
			host = e.Node.Address
		}
		out = append(out, net.JoinHostPort(host, strconv.Itoa(e.Service.Port)))
	}
	return out
}

// run writes until ctx ends.
func (c *client) run(ctx context.Context, every time.Duration) {
	for n := 1; ctx.Err() == nil; n++ {
		name, content := fmt.Sprintf("w-%05d", n), strconv.Itoa(n)
		written := false
		for _, addr := range c.masters(ctx) {
			if c.write(ctx, addr, name, content) {
				c.mu.Lock()
				c.acks = append(c.acks, ack{name: name, content: content, addr: addr, at: time.Now()})
				c.mu.Unlock()
				written = true
				break
			}
		}
		if !written {
			c.mu.Lock()
			c.failed++
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-time.After(every):
		}
	}
}

func (c *client) write(ctx context.Context, addr, name, content string) bool {
	u := "http://" + addr + "/write?name=" + url.QueryEscape(name) + "&content=" + url.QueryEscape(content)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return false
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode == http.StatusOK && strings.TrimSpace(string(b)) == "written"
}

func (c *client) snapshot() ([]ack, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]ack(nil), c.acks...), c.failed
}

// firstAckAfter returns the first write acknowledged after t by an address other than old.
func (c *client) firstAckAfter(t time.Time, old string) (ack, bool) {
	acks, _ := c.snapshot()
	for _, a := range acks {
		if a.at.After(t) && a.addr != old {
			return a, true
		}
	}
	return ack{}, false
}
