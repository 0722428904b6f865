package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// A syncer that cannot run (Consul unreachable or refusing, an ACL that denies the session, a
// missing secret, ...) exits non-zero, and Nomad shows only "Exit Code: 1" while the reason is
// in the task's stderr. The driver reads the syncer's last words and tells them as a task
// event, so the Nomad UI names the cause, and the syncer's messages name the fix.

// syncerLogTail is how many of the exited syncer's last stderr lines are searched.
const syncerLogTail = "40"

// tellSyncerFailure emits the exited syncer's last error as a task event.
func (h *taskHandle) tellSyncerFailure(ctx context.Context, code int) {
	cli, err := h.d.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := cli.ContainerLogs(ctx, h.containerID, container.LogsOptions{ShowStderr: true, ShowStdout: true, Tail: syncerLogTail})
	if err != nil {
		return
	}
	defer func() { _ = rc.Close() }()
	var out, errOut bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &errOut, io.LimitReader(rc, 1<<20)); err != nil {
		return
	}
	if why := lastSyncerError(errOut.String() + out.String()); why != "" {
		h.d.emit(h, "Syncer exited with code %d: %s", code, why)
	}
}

// lastSyncerError picks the syncer's last error from its stderr: the last hclog JSON line at
// error level ("message: error"), else the last plain line (usage errors are printed plain).
func lastSyncerError(logs string) string {
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	plain := ""
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" {
			continue
		}
		if !strings.HasPrefix(l, "{") {
			if plain == "" {
				plain = l
			}
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil {
			continue
		}
		if lvl, _ := rec["@level"].(string); lvl != "error" {
			continue
		}
		msg, _ := rec["@message"].(string)
		if e, ok := rec["error"]; ok {
			msg = fmt.Sprintf("%s: %v", msg, e)
		}
		return clip(msg)
	}
	return clip(plain)
}

// clip bounds a message for the Nomad UI.
func clip(s string) string {
	const limit = 600
	if len(s) > limit {
		s = s[:limit] + "…"
	}
	return s
}
