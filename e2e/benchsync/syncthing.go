package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// stNode is one Syncthing instance driven through its REST API. Everything
// that could reach beyond loopback (discovery, relays, NAT, STUN, usage and
// crash reports, upgrades) is switched off in its config before it starts.
type stNode struct {
	home, gui, listen, key, id string
}

func newSTNode(ctx context.Context, home string) (*stNode, error) {
	n := &stNode{home: home, key: "benchsync-api-key-0123456789"}
	var err error
	if n.gui, err = freeAddr(); err != nil {
		return nil, err
	}
	if n.listen, err = freeAddr(); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "syncthing", "generate", "--home="+home, "--no-default-folder", "--skip-port-probing").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("syncthing generate: %w: %s", err, out)
	}
	cfgPath := filepath.Join(home, "config.xml")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	s := string(b)
	for _, r := range [][2]string{
		{"<listenAddress>default</listenAddress>", "<listenAddress>tcp://" + n.listen + "</listenAddress>"},
		{"<globalAnnounceEnabled>true<", "<globalAnnounceEnabled>false<"},
		{"<localAnnounceEnabled>true<", "<localAnnounceEnabled>false<"},
		{"<relaysEnabled>true<", "<relaysEnabled>false<"},
		{"<natEnabled>true<", "<natEnabled>false<"},
		{"<startBrowser>true<", "<startBrowser>false<"},
		{"<urAccepted>0<", "<urAccepted>-1<"},
		{"<autoUpgradeIntervalH>12<", "<autoUpgradeIntervalH>0<"},
		{"<crashReportingEnabled>true<", "<crashReportingEnabled>false<"},
		{"<stunKeepaliveStartS>180<", "<stunKeepaliveStartS>0<"},
	} {
		if !strings.Contains(s, r[0]) {
			return nil, fmt.Errorf("syncthing config: %q not found", r[0])
		}
		s = strings.ReplaceAll(s, r[0], r[1])
	}
	if err := os.WriteFile(cfgPath, []byte(s), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command("syncthing", "serve", "--home="+home, "--no-browser", "--no-restart", "--no-upgrade",
		"--gui-address=http://"+n.gui, "--gui-apikey="+n.key)
	cmd.Env = append(os.Environ(), "STNOUPGRADE=1", "STNORESTART=1")
	if *verbose {
		cmd.Stderr = os.Stderr
	}
	if err := start(cmd); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var st struct {
			MyID string `json:"myID"`
		}
		if err := n.call("GET", "/rest/system/status", nil, &st); err == nil && st.MyID != "" {
			n.id = st.MyID
			return n, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errors.New("syncthing did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (n *stNode) call(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+n.gui+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", n.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (n *stNode) addDevice(o *stNode) error {
	return n.call("POST", "/rest/config/devices", map[string]any{
		"deviceID": o.id, "name": filepath.Base(o.home), "addresses": []string{"tcp://" + o.listen},
	}, nil)
}

func (n *stNode) addFolder(path, typ string, peers ...*stNode) error {
	devs := []map[string]string{{"deviceID": n.id}}
	for _, p := range peers {
		devs = append(devs, map[string]string{"deviceID": p.id})
	}
	return n.call("POST", "/rest/config/folders", map[string]any{
		"id": "bench", "label": "bench", "path": path, "type": typ, "devices": devs,
		"fsWatcherEnabled": true, "fsWatcherDelayS": 1, "rescanIntervalS": 3600,
	}, nil)
}

type stFolderStatus struct {
	State          string `json:"state"`
	GlobalFiles    int64  `json:"globalFiles"`
	LocalFiles     int64  `json:"localFiles"`
	NeedTotalItems int64  `json:"needTotalItems"`
	GlobalBytes    int64  `json:"globalBytes"`
	LocalBytes     int64  `json:"localBytes"`
}

func (n *stNode) folderStatus() (stFolderStatus, error) {
	var st stFolderStatus
	err := n.call("GET", "/rest/db/status?folder=bench", nil, &st)
	return st, err
}

// waitComplete waits until the folder holds at least files files and needs
// nothing.
func (n *stNode) waitComplete(ctx context.Context, files int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := n.folderStatus()
		if err == nil && st.State == "idle" && st.NeedTotalItems == 0 && st.LocalFiles >= files && st.LocalBytes == st.GlobalBytes {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("syncthing folder on %s not complete within %v (last %+v): %w", filepath.Base(n.home), timeout, st, timeoutCause(ctx, err))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func syncthingBench(ctx context.Context, base, src string, r *results) error {
	logf("syncthing: starting 3 instances")
	a, err := newSTNode(ctx, filepath.Join(base, "st-a"))
	if err != nil {
		return err
	}
	b1, err := newSTNode(ctx, filepath.Join(base, "st-b1"))
	if err != nil {
		return err
	}
	b2, err := newSTNode(ctx, filepath.Join(base, "st-b2"))
	if err != nil {
		return err
	}
	for _, pair := range [][2]*stNode{{a, b1}, {a, b2}, {b1, a}, {b2, a}} {
		if err := pair[0].addDevice(pair[1]); err != nil {
			return err
		}
	}
	if err := a.addFolder(src, "sendonly", b1, b2); err != nil {
		return err
	}
	// The sender scans first (like our master and the rsync daemon, whose
	// setup is not timed either).
	if err := a.waitComplete(ctx, r.treeFiles, 20*time.Minute); err != nil {
		return err
	}
	d1, d2 := filepath.Join(base, "st-dst1"), filepath.Join(base, "st-dst2")
	t0 := time.Now()
	if err := b1.addFolder(d1, "receiveonly", a); err != nil {
		return err
	}
	if err := b1.waitComplete(ctx, r.treeFiles, 20*time.Minute); err != nil {
		return err
	}
	r.syncthing = time.Since(t0)
	logf("syncthing initial sync: %v", r.syncthing)
	if err := b2.addFolder(d2, "receiveonly", a); err != nil {
		return err
	}
	if err := b2.waitComplete(ctx, r.treeFiles, 20*time.Minute); err != nil {
		return err
	}
	lat, err := latency(ctx, src, []string{d1, d2}, *stSamples, 2*time.Millisecond)
	if err != nil {
		return fmt.Errorf("syncthing latency: %w", err)
	}
	r.stP50, r.stP99 = pct(lat, 50), pct(lat, 99)
	logf("syncthing latency p50=%.0fms p99=%.0fms", r.stP50, r.stP99)
	return nil
}
