package status

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

const usage = `Usage: nomad-driver-bedrock status -job NAME [-group G] [-namespace NS]
         [-consul ADDR] [-nomad ADDR] [-service NAME] [-json] [-verbose]

Shows each instance of a job's Bedrock groups as Consul sees them: instance
(allocation) id, node, role (master, clone, down, absent), term, replication
position, lag behind the master in operations, caught-up flag, health of its
Consul service checks and sync address; with -nomad (or NOMAD_ADDR) also the
allocation's status in Nomad. Without -group every group of the job that has
election keys in Consul is shown.

Consul: -consul, else CONSUL_HTTP_ADDR, else 127.0.0.1:8500; the token comes
from CONSUL_HTTP_TOKEN (it needs key read on bedrock/ and service read).

Verdict (last line, and the exit status):
  0  healthy    one master and at least 2 live caught-up clones in every group
  1  degraded   a master, but fewer than 2 live caught-up clones, fewer than
                3 instances, or another instance registered as master
  2  no master  nobody holds the lock of some group
  3  error      Consul unreachable or refusing, job or group not found
Bad usage also exits 2, with nothing on stdout.

Flags:
`

// Run is the `status` command: it parses its flags from args (the
// arguments after the command name), prints the report to stdout (a table,
// or JSON with -json) and returns the exit status: the verdict's code,
// ExitError when no verdict could be reached (the reason on stderr), or
// ExitUsage on bad usage.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o Options
	fs.StringVar(&o.Job, "job", "", "Nomad job id (required)")
	fs.StringVar(&o.Group, "group", "", "task group (default: every group of the job found in Consul)")
	fs.StringVar(&o.Namespace, "namespace", "default", "Nomad namespace of the job")
	fs.StringVar(&o.ConsulAddr, "consul", "", "Consul agent HTTP address (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
	fs.StringVar(&o.NomadAddr, "nomad", "", "Nomad API address (default: NOMAD_ADDR; without either Nomad is not asked)")
	fs.StringVar(&o.Service, "service", "", "Consul service of the app (default: <job>-<group>, else found by its role tags)")
	fs.DurationVar(&o.Timeout, "timeout", DefaultTimeout, "bound on each request to Consul or Nomad")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	verbose := fs.Bool("verbose", false, "show full allocation ids")
	fs.Usage = func() {
		_, _ = fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitHealthy
		}
		return ExitUsage
	}
	if fs.NArg() > 0 {
		_, _ = fmt.Fprintf(stderr, "status: unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return ExitUsage
	}
	if o.Job == "" {
		_, _ = fmt.Fprintln(stderr, "status: -job is required")
		fs.Usage()
		return ExitUsage
	}
	if o.Timeout <= 0 {
		_, _ = fmt.Fprintln(stderr, "status: -timeout must be positive")
		return ExitUsage
	}
	r, err := Collect(ctx, o)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "status: %v\n", err)
		return ExitError
	}
	if *jsonOut {
		err = WriteJSON(stdout, r)
	} else {
		err = WriteTable(stdout, r, *verbose)
	}
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "status: %v\n", err)
		return ExitError
	}
	return r.ExitCode
}
