package jobspecs

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Exit statuses of the validate command, so CI can tell a policy violation
// from input it could not check at all.
const (
	ExitClean      = 0 // no errors (warnings may have been printed)
	ExitErrors     = 1 // at least one jobspec breaks the policy
	ExitUnreadable = 2 // a file could not be read or parsed, or bad usage
)

// varFlags collects repeated -var name=value flags.
type varFlags map[string]string

// String is part of flag.Value; the collected values are not echoed back.
func (v varFlags) String() string { return "" }

// Set records one name=value pair.

func (v varFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("want name=value, got %q", s)
	}
	v[strings.TrimSpace(name)] = value
	return nil
}

const validateUsage = `Usage: nomad-driver-bedrock validate [-json] [-var name=value]... FILE|DIR...

Checks Nomad jobspecs against Bedrock's placement policy: at least 3
instances on distinct hosts, one syncer task as a prestart sidecar on a
declared port, one app task with a data path, and failover-friendly
restart, update and reschedule settings. A directory stands for the *.hcl
files in it.

Diagnostics go to stdout as "file:line:col: severity: message; hint: how to
fix", or as one JSON array with -json. Exit status: 0 no errors, 1 errors,
2 unreadable input or bad usage.

Input variables come from -var flags, then NOMAD_VAR_<name> environment
variables, then the defaults of the file's variable blocks.

Flags:
`

// RunValidate is the `validate` command: it parses its flags from args (the
// arguments after the command name), validates every named file and prints
// diagnostics to stdout; usage problems go to stderr. It returns the exit
// status: [ExitClean], [ExitErrors] or [ExitUnreadable].
func RunValidate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jsonOut := fs.Bool("json", false, "print diagnostics as a JSON array of {file,line,col,severity,message,hint}")
	vars := varFlags{}
	fs.Var(vars, "var", "set an input variable, like nomad job run -var (repeatable)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), validateUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitClean
		}
		return ExitUnreadable
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "validate: no files given")
		fs.Usage()
		return ExitUnreadable
	}

	// Like nomad job run: NOMAD_VAR_<name> in the environment, overridden by -var.
	for _, kv := range os.Environ() {
		if name, value, ok := strings.Cut(strings.TrimPrefix(kv, "NOMAD_VAR_"), "="); ok && strings.HasPrefix(kv, "NOMAD_VAR_") {
			if _, set := vars[name]; !set && name != "" {
				vars[name] = value
			}
		}
	}
	paths, all := expandPaths(fs.Args())
	unreadable := len(all) > 0
	for _, path := range paths {
		if err := ctx.Err(); err != nil {
			fmt.Fprintf(stderr, "validate: %v\n", err)
			return ExitUnreadable
		}
		diags, err, ok := validateCancellable(ctx, path, vars)
		if !ok {
			fmt.Fprintf(stderr, "validate: %v\n", ctx.Err())
			return ExitUnreadable
		}
		if err != nil {
			unreadable = true
		}
		all = append(all, diags...)
	}

	write := all.writeText
	if *jsonOut {
		write = all.writeJSON
	}
	if err := write(stdout); err != nil {
		fmt.Fprintf(stderr, "validate: %v\n", err)
		return ExitUnreadable
	}
	switch {
	case unreadable:
		return ExitUnreadable
	case all.HasErrors():
		return ExitErrors
	default:
		return ExitClean
	}
}

// validateCancellable validates one file in a goroutine so that ctx
// (Ctrl-C) ends the command at once, whatever the file does; ok is false
// when ctx ended first (the goroutine is abandoned: the process exits).
func validateCancellable(ctx context.Context, path string, vars map[string]string) (Diagnostics, error, bool) { //nolint:revive // the flag says whether the first two are meaningful
	type result struct {
		diags Diagnostics
		err   error
	}
	done := make(chan result, 1)
	go func() {
		d, err := validatePath(path, vars)
		done <- result{d, err}
	}()
	select {
	case r := <-done:
		return r.diags, r.err, true
	case <-ctx.Done():
		return nil, nil, false
	}
}

// expandPaths replaces each directory argument with the *.hcl files in it
// (sorted). A directory without any yields a diagnostic instead, which makes
// the run fail as unreadable input.
func expandPaths(args []string) ([]string, Diagnostics) {
	var out []string
	var diags Diagnostics
	for _, arg := range args {
		info, err := os.Stat(arg)
		if err != nil || !info.IsDir() {
			out = append(out, arg) // validatePath reports the read error
			continue
		}
		matches, err := filepath.Glob(filepath.Join(arg, "*.hcl"))
		if err != nil || len(matches) == 0 {
			diags = append(diags, Diagnostic{File: arg, Severity: SeverityError,
				Message: "cannot read directory: no .hcl files in it", Hint: "name the jobspec files to validate"})
			continue
		}
		sort.Strings(matches)
		out = append(out, matches...)
	}
	return out, diags
}

// MaxJobspecSize bounds what validate reads: a jobspec is a few KiB; a
// path that names something much larger (a disk image, /dev/zero) is a
// mistake, not a file to read into memory.
const MaxJobspecSize = 4 << 20

// validatePath reads and validates one file. The error is non-nil (wrapping
// ErrUnreadable) when the file could not be read or parsed.
func validatePath(path string, vars map[string]string) (Diagnostics, error) {
	src, err := readJobspec(path)
	if err != nil {
		msg := "cannot read file"
		var pe *os.PathError
		switch {
		case errors.Is(err, errNotRegular), errors.Is(err, errTooLarge):
			msg += ": " + err.Error()
		case errors.As(err, &pe):
			msg += ": " + pe.Err.Error()
		}
		d := Diagnostic{File: path, Severity: SeverityError, Message: msg, Hint: "check the path and its permissions"}
		if errors.Is(err, errNotRegular) || errors.Is(err, errTooLarge) {
			d.Hint = "name a jobspec file (a regular file of at most 4 MiB)"
		}
		return Diagnostics{d}, fmt.Errorf("read %s: %w: %w", path, ErrUnreadable, err)
	}
	return Validate(path, src, ValidateOptions{Vars: vars})
}

var (
	errNotRegular = errors.New("not a regular file")
	errTooLarge   = fmt.Errorf("larger than %d MiB", MaxJobspecSize>>20)
)

// readJobspec reads a regular file of at most MaxJobspecSize bytes. It
// opens without blocking (a FIFO would otherwise wait for a writer
// forever) and checks what it opened, not what the name pointed to before.
func readJobspec(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is a %s: %w", path, kindOf(fi.Mode()), errNotRegular)
	}
	if fi.Size() > MaxJobspecSize {
		return nil, errTooLarge
	}
	src, err := io.ReadAll(io.LimitReader(f, MaxJobspecSize+1))
	if err != nil {
		return nil, err
	}
	if len(src) > MaxJobspecSize {
		return nil, errTooLarge
	}
	return src, nil
}

func kindOf(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}
