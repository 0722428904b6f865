package status

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the report as one indented JSON document, for scripts.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

// WriteTable writes the report for humans: per group a header line, one
// row per instance and the group's verdict with its reasons; last, the
// job's verdict on a line of its own ("verdict: healthy"). Full instance
// ids are shortened to 8 characters like Nomad's CLI unless verbose.
func WriteTable(w io.Writer, r *Report, verbose bool) error {
	var b strings.Builder
	fmt.Fprintf(&b, "job %s (namespace %s), consul %s", r.Job, r.Namespace, r.Consul)
	if r.Nomad != "" {
		fmt.Fprintf(&b, ", nomad %s", r.Nomad)
	}
	b.WriteString("\n")
	nomad := r.Nomad != ""
	for _, g := range r.Groups {
		b.WriteString("\n")
		master := "none"
		if g.Master != "" {
			master = shortID(g.Master, verbose)
		}
		fmt.Fprintf(&b, "group %s: master %s, term %d", g.Name, master, g.Term)
		for _, in := range g.Instances {
			if in.Role == RoleMaster && in.AppAddress != "" {
				fmt.Fprintf(&b, ", app at %s", in.AppAddress)
			}
		}
		if g.Service != "" {
			fmt.Fprintf(&b, ", service %s", g.Service)
		}
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		header := "INSTANCE\tNODE\tROLE\tTERM\tPOSITION\tLAG\tCAUGHT-UP\tHEALTH\tSYNC ADDRESS"
		if nomad {
			header += "\tNOMAD"
		}
		fmt.Fprintln(tw, header)
		for _, in := range g.Instances {
			row := []string{shortID(in.ID, verbose), dash(in.Node), string(in.Role), termCell(in), positionCell(in),
				lagCell(in), yesNo(in.CaughtUp), dash(in.Health), dash(in.SyncAddress)}
			if nomad {
				row = append(row, dash(in.Nomad))
			}
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write table: %w", err)
		}
		fmt.Fprintf(&b, "%s: %s\n", g.Name, Summary(&g))
		if g.Master == "" && g.HighWater != nil {
			fmt.Fprintf(&b, "%s: a new master must hold the high-water mark %s (delete %s/highwater in Consul to accept losing it)\n",
				g.Name, g.HighWater, g.KeyPrefix)
			for _, in := range g.Instances {
				if in.Live && in.Waiting != "" {
					fmt.Fprintf(&b, "waiting: %s: %s\n", shortID(in.ID, verbose), in.Waiting)
				}
			}
		}
		for _, warn := range g.Warnings {
			fmt.Fprintf(&b, "warning: %s\n", warn)
		}
	}
	if len(r.Warnings) > 0 {
		b.WriteString("\n")
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", warn)
	}
	fmt.Fprintf(&b, "\nverdict: %s\n", r.Verdict)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// shortID shortens a Nomad allocation id (a 36-character UUID) to its first
// 8 characters, like `nomad job status`; other ids stay whole.
func shortID(id string, verbose bool) string {
	if verbose || len(id) != 36 || strings.Count(id, "-") != 4 {
		return id
	}
	return id[:8]
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func termCell(in Instance) string {
	if in.Role == RoleAbsent {
		return "-"
	}
	return strconv.FormatUint(in.Term, 10)
}

func positionCell(in Instance) string {
	if in.Role == RoleAbsent {
		return "-"
	}
	return in.Position.String()
}

// lagCell: "-" for the master (the reference), "?" when the instance has
// no position in the reference term.
func lagCell(in Instance) string {
	switch {
	case in.Role == RoleMaster || in.Role == RoleAbsent:
		return "-"
	case in.LagOps == nil:
		return "?"
	default:
		return strconv.FormatUint(*in.LagOps, 10)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
