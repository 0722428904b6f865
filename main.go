// Command nomad-driver-bedrock is the Bedrock task driver for HashiCorp
// Nomad. Started by a Nomad client (which sets the plugin magic cookie) it
// serves the driver plugin; started by hand it is a small CLI for the
// syncer task, jobspec validation and starter jobspecs.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/bedrock-nomad/nomad-driver-bedrock/driver"
	"github.com/bedrock-nomad/nomad-driver-bedrock/jobspecs"
	"github.com/bedrock-nomad/nomad-driver-bedrock/plugin"
	"github.com/bedrock-nomad/nomad-driver-bedrock/status"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	if plugin.LaunchedByNomad() {
		// Nothing may reach stdout before go-plugin's handshake line.
		driver.Version = version
		logger := plugin.NewLogger("bedrock", os.Getenv("BEDROCK_LOG_LEVEL"))
		plugin.Serve(driver.New(logger), logger)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal cancels ctx, which every command follows; from then
	// on signals get their default action again, so a second Ctrl-C ends
	// the process whatever it is doing.
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one CLI subcommand.
type command struct {
	name   string
	usage  string
	run    func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	hidden bool
}

func commands() []command {
	return []command{
		{name: "syncer", usage: "syncer -data DIR -listen ADDR [-master ADDR -term N] ...   run the replication syncer (what the syncer task runs)", run: syncer.Main},
		{name: "validate", usage: "validate FILE...   check jobspecs against Bedrock's placement and wiring rules (-json for CI)", run: jobspecs.RunValidate},
		{name: "init", usage: "init --image IMG --port N --data PATH [--name N]   print a starter jobspec", run: jobspecs.RunInit},
		{name: "status", usage: "status -job NAME [-group G] [-namespace NS] [-consul ADDR] [-nomad ADDR] [-json]   show each instance's role, lag and health, and a verdict", run: status.Run},
		{name: "version", usage: "version   print the plugin version", run: func(_ context.Context, _ []string, stdout, _ io.Writer) int {
			_, _ = fmt.Fprintf(stdout, "nomad-driver-bedrock v%s\n", version)
			return 0
		}},
		{name: "docker-logger", hidden: true, run: driver.RunLogger},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 1
	}
	switch args[0] {
	case "-version", "--version", "-v":
		args = []string{"version"}
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	_, _ = fmt.Fprintf(stderr, "nomad-driver-bedrock: unknown command %q\n\n", args[0])
	usage(stderr)
	return 1
}

func usage(w io.Writer) {
	_, _ = fmt.Fprintf(w, `nomad-driver-bedrock v%s: the Bedrock task driver plugin for HashiCorp Nomad.

This binary is a Nomad plugin; the Nomad client starts it, so running it by
hand does not start the driver. To install it:
  1. copy it into the client's plugin_dir (e.g. <nomad data_dir>/plugins),
  2. add to the client configuration:    plugin "nomad-driver-bedrock" {}
  3. restart the client and check:       nomad node status -verbose   (driver.bedrock)

Commands:
`, version)
	for _, c := range commands() {
		if !c.hidden {
			_, _ = fmt.Fprintf(w, "  nomad-driver-bedrock %s\n", c.usage)
		}
	}
}
