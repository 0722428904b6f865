package cluster

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin/harness"
)

// Jobspec is what the cluster takes from a Bedrock jobspec, in the Nomad server's place: the
// job and group names, the group's ports, and the syncer and app tasks' config blocks as HCL
// text (the harness encodes them with the plugin's schema, as a Nomad client does).
type Jobspec struct {
	Job, Group string
	Count      int
	// Ports are the group's network ports (label and `to`); host values are picked per
	// allocation on the node's address.
	Ports []harness.Port
	// SyncerTask and AppTask name the tasks; SyncerConfig and AppConfig are their config bodies.
	SyncerTask, AppTask     string
	SyncerConfig, AppConfig string
	// SyncerUsesSecretFromEnv: the syncer's secret is ${BEDROCK_SYNC_SECRET}, which the
	// jobspec's template renders from a Nomad variable; the cluster sets it in the task env.
	SyncerUsesSecretFromEnv bool
}

// ParseJobspec reads the first group of a jobspec holding a syncer task (a bedrock task whose
// config has a syncer block) and an app task (a bedrock task with an image).
func ParseJobspec(filename string, src []byte) (*Jobspec, error) {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, fmt.Errorf("jobspec: %w", diags)
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		return nil, fmt.Errorf("jobspec %s: not native HCL syntax", filename)
	}
	for _, job := range blocks(body, "job") {
		for _, group := range blocks(job.Body, "group") {
			js := &Jobspec{Job: label(job), Group: label(group), Count: 1}
			if a, ok := group.Body.Attributes["count"]; ok {
				if v, d := a.Expr.Value(nil); !d.HasErrors() && v.Type().FriendlyName() == "number" {
					n, _ := v.AsBigFloat().Int64()
					js.Count = int(n)
				}
			}
			for _, nw := range blocks(group.Body, "network") {
				for _, p := range blocks(nw.Body, "port") {
					port := harness.Port{Label: label(p)}
					if a, ok := p.Body.Attributes["to"]; ok {
						if v, d := a.Expr.Value(nil); !d.HasErrors() {
							n, _ := v.AsBigFloat().Int64()
							port.To = int32(n) //nolint:gosec // a port number
						}
					}
					js.Ports = append(js.Ports, port)
				}
			}
			for _, task := range blocks(group.Body, "task") {
				for _, cfg := range blocks(task.Body, "config") {
					text := string(src[cfg.OpenBraceRange.End.Byte:cfg.CloseBraceRange.Start.Byte])
					if len(blocks(cfg.Body, "syncer")) > 0 {
						js.SyncerTask, js.SyncerConfig = label(task), text
						js.SyncerUsesSecretFromEnv = strings.Contains(text, "BEDROCK_SYNC_SECRET")
					} else if _, ok := cfg.Body.Attributes["image"]; ok {
						js.AppTask, js.AppConfig = label(task), text
					}
				}
			}
			if js.SyncerTask != "" && js.AppTask != "" {
				return js, nil
			}
		}
	}
	return nil, fmt.Errorf("jobspec %s: no group with a syncer task and an app task", filename)
}

func blocks(b *hclsyntax.Body, typ string) []*hclsyntax.Block {
	var out []*hclsyntax.Block
	for _, blk := range b.Blocks {
		if blk.Type == typ {
			out = append(out, blk)
		}
	}
	return out
}

func label(b *hclsyntax.Block) string {
	if len(b.Labels) == 0 {
		return ""
	}
	return b.Labels[0]
}
