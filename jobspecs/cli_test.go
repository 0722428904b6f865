package jobspecs

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShippedJobspecsValidateClean keeps every jobspec shipped in this
// directory free of errors and warnings, and embedded.
func TestShippedJobspecsValidateClean(t *testing.T) {
	onDisk, err := filepath.Glob("*.nomad.hcl")
	if err != nil {
		t.Fatal(err)
	}
	embedded, err := fs.Glob(Shipped(), "*.nomad.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(onDisk, ",") != strings.Join(embedded, ",") {
		t.Fatalf("embedded jobspecs %v differ from the directory's %v", embedded, onDisk)
	}
	for _, want := range []string{"demo.nomad.hcl", "minecraft.nomad.hcl", "gitea.nomad.hcl"} {
		if !strings.Contains(strings.Join(embedded, ","), want) {
			t.Errorf("%s is not shipped", want)
		}
	}
	for _, name := range embedded {
		src, err := fs.ReadFile(Shipped(), name)
		if err != nil {
			t.Fatal(err)
		}
		diags, err := Validate(name, src, ValidateOptions{})
		if err != nil || len(diags) != 0 {
			t.Errorf("%s does not validate clean (err %v):\n%v", name, err, diags)
		}
	}
}

func TestDemo(t *testing.T) {
	demo := string(Demo())
	for _, want := range []string{`image = "bedrock-demo:latest"`, "to = 8080", `data  = "/data"`, "count = 3"} {
		if !strings.Contains(demo, want) {
			t.Errorf("demo jobspec lacks %q", want)
		}
	}
}

func TestRunValidate(t *testing.T) {
	const (
		count2Line = "testdata/bad_count2.nomad.hcl:3:13: error: count = 2 runs fewer than 3 instances; Bedrock needs at least 3 for failover; hint: set count = 3 or more\n"
		syntaxLine = "testdata/bad_syntax_token.nomad.hcl:3:13: error: syntax error: Invalid expression; hint: Expected the start of an expression, but found an invalid expression token.\n"
	)
	cases := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrHas  string
		stdoutHas  string
		skipStdout bool
	}{
		{name: "clean", args: []string{"testdata/good_minimal.nomad.hcl"}, code: ExitClean},
		{name: "warnings only", args: []string{"testdata/warn_reschedule.nomad.hcl"}, code: ExitClean,
			stdout: "testdata/warn_reschedule.nomad.hcl:7:19: warning: reschedule never replaces a failed instance (unlimited = false, attempts = 0), so the group stays short of a clone; hint: set unlimited = true, or attempts > 0\n" +
				"testdata/warn_reschedule.nomad.hcl:8:19: warning: reschedule delay = 2m0s leaves the group short of a clone that long after an instance fails; hint: set delay = \"5s\" to \"30s\"\n"},
		{name: "errors", args: []string{"testdata/bad_count2.nomad.hcl", "testdata/good_minimal.nomad.hcl"}, code: ExitErrors, stdout: count2Line},
		{name: "syntax error", args: []string{"testdata/bad_syntax_token.nomad.hcl"}, code: ExitUnreadable, stdout: syntaxLine},
		{name: "syntax error wins over errors", args: []string{"testdata/bad_count2.nomad.hcl", "testdata/bad_syntax_token.nomad.hcl"},
			code: ExitUnreadable, stdout: count2Line + syntaxLine},
		{name: "missing file", args: []string{"testdata/nope.nomad.hcl"}, code: ExitUnreadable,
			stdout: "testdata/nope.nomad.hcl: error: cannot read file: no such file or directory; hint: check the path and its permissions\n"},
		{name: "directory", args: []string{"."}, code: ExitClean},
		{name: "empty directory", args: []string{t.TempDir()}, code: ExitUnreadable, stdoutHas: "error: cannot read directory: no .hcl files in it"},
		{name: "var override", args: []string{"-var", "instances=2", "testdata/good_variables.nomad.hcl"}, code: ExitErrors,
			stdout: "testdata/good_variables.nomad.hcl:19:13: error: count = 2 runs fewer than 3 instances; Bedrock needs at least 3 for failover; hint: set count = 3 or more\n"},
		{name: "var resolves unknown", args: []string{"-var=instances=4", "-var", "spread_out=true", "-var", "tag=1", "testdata/warn_unknown_values.nomad.hcl"}, code: ExitClean,
			stdout: "testdata/warn_unknown_values.nomad.hcl:30:19: warning: cannot evaluate lifecycle hook statically; hint: pass the value with -var name=value or use a literal\n"},
		{name: "list var", args: []string{"-var", `ports=["http", "web"]`, "testdata/good_var_ports.nomad.hcl"}, code: ExitErrors,
			stdout: "testdata/good_var_ports.nomad.hcl:44:17: error: port \"web\" of task \"app\" is not declared in the group's network block; hint: add port \"web\" {} to the group's network block\n"},
		{name: "bad var", args: []string{"-var", "novalue", "testdata/good_minimal.nomad.hcl"}, code: ExitUnreadable, stderrHas: `want name=value, got "novalue"`},
		{name: "no files", args: nil, code: ExitUnreadable, stderrHas: "validate: no files given"},
		{name: "unknown flag", args: []string{"-yaml", "x"}, code: ExitUnreadable, stderrHas: "flag provided but not defined: -yaml"},
		{name: "help", args: []string{"-h"}, code: ExitClean, stderrHas: "Usage: nomad-driver-bedrock validate"},
		{name: "json clean", args: []string{"-json", "testdata/good_minimal.nomad.hcl"}, code: ExitClean, stdout: "[]\n"},
		{name: "json errors", args: []string{"-json", "testdata/bad_count2.nomad.hcl"}, code: ExitErrors, stdout: `[
  {
    "file": "testdata/bad_count2.nomad.hcl",
    "line": 3,
    "col": 13,
    "severity": "error",
    "message": "count = 2 runs fewer than 3 instances; Bedrock needs at least 3 for failover",
    "hint": "set count = 3 or more"
  }
]
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := RunValidate(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stdout:\n%s\nstderr:\n%s", code, tc.code, stdout.String(), stderr.String())
			}
			switch {
			case tc.stdoutHas != "":
				if !strings.Contains(stdout.String(), tc.stdoutHas) {
					t.Errorf("stdout %q lacks %q", stdout.String(), tc.stdoutHas)
				}
			case stdout.String() != tc.stdout:
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), tc.stdout)
			}
			if tc.stderrHas != "" && !strings.Contains(stderr.String(), tc.stderrHas) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.stderrHas)
			}
			if tc.stderrHas == "" && stderr.Len() > 0 {
				t.Errorf("unexpected stderr: %s", stderr.String())
			}
		})
	}
}

// TestRunValidateJSONUnparsable checks that CI gets exactly one record for a
// file it cannot parse, and that every field is filled.
func TestRunValidateJSONUnparsable(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := RunValidate(context.Background(), []string{"-json", "testdata/bad_syntax_unclosed.nomad.hcl"}, &stdout, &stderr)
	if code != ExitUnreadable {
		t.Fatalf("exit %d, want %d", code, ExitUnreadable)
	}
	var got []Diagnostic
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
	}
	want := Diagnostic{File: "testdata/bad_syntax_unclosed.nomad.hcl", Line: 1, Col: 12, Severity: SeverityError,
		Message: "syntax error: Unclosed configuration block",
		Hint:    "There is no closing brace for this block before the end of the file. This may be caused by incorrect brace nesting elsewhere in this file."}
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %+v, want [%+v]", got, want)
	}
}

func TestRunValidateNomadVarEnv(t *testing.T) {
	t.Setenv("NOMAD_VAR_instances", "2")
	var stdout, stderr bytes.Buffer
	if code := RunValidate(context.Background(), []string{"testdata/good_variables.nomad.hcl"}, &stdout, &stderr); code != ExitErrors {
		t.Errorf("exit %d, want %d: %s", code, ExitErrors, stdout.String())
	}
	want := "testdata/good_variables.nomad.hcl:19:13: error: count = 2 runs fewer than 3 instances; Bedrock needs at least 3 for failover; hint: set count = 3 or more\n"
	if stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	// -var wins over the environment.
	stdout.Reset()
	if code := RunValidate(context.Background(), []string{"-var", "instances=3", "testdata/good_variables.nomad.hcl"}, &stdout, &stderr); code != ExitClean {
		t.Errorf("exit %d, want %d: %s", code, ExitClean, stdout.String())
	}
}

func TestRunValidateCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	if code := RunValidate(ctx, []string{"testdata/good_minimal.nomad.hcl"}, &stdout, &stderr); code != ExitUnreadable {
		t.Errorf("exit %d, want %d", code, ExitUnreadable)
	}
	if stdout.Len() != 0 {
		t.Errorf("nothing may be reported as valid after cancellation, got %q", stdout.String())
	}
}

// TestRunValidateUnreadableFile uses a path below a regular file, which no
// user (root included) can read.
func TestRunValidateUnreadableFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(p, "job.nomad.hcl")
	var stdout, stderr bytes.Buffer
	if code := RunValidate(context.Background(), []string{bad, "testdata/good_minimal.nomad.hcl"}, &stdout, &stderr); code != ExitUnreadable {
		t.Errorf("exit %d, want %d", code, ExitUnreadable)
	}
	want := bad + ": error: cannot read file: not a directory; hint: check the path and its permissions\n"
	if stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
}

// TestRunValidateRefusesHostileInput: validate refuses what it cannot
// check with one clear error and exit status 2, promptly: a FIFO (it would
// wait for a writer forever), a device (/dev/zero would be read until
// memory runs out), a file over MaxJobspecSize, and brackets nested deeper
// than MaxNesting (the parser's recursion would overflow the stack).
func TestRunValidateRefusesHostileInput(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "job.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.nomad.hcl")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# padding\n"), MaxJobspecSize/10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	deep := filepath.Join(dir, "deep.nomad.hcl")
	if err := os.WriteFile(deep, []byte("x = "+strings.Repeat("[", 100000)+strings.Repeat("]", 100000)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		fifo:        "not a regular file",
		"/dev/zero": "not a regular file",
		big:         "larger than 4 MiB",
		deep:        "nest deeper than",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var stdout, stderr bytes.Buffer
		start := time.Now()
		code := RunValidate(ctx, []string{path}, &stdout, &stderr)
		cancel()
		if code != ExitUnreadable {
			t.Errorf("%s: exit %d, want %d (%s%s)", path, code, ExitUnreadable, stdout.String(), stderr.String())
		}
		if !strings.Contains(stdout.String(), want) || strings.Count(stdout.String(), "\n") != 1 {
			t.Errorf("%s: want one error saying %q, got %q", path, want, stdout.String())
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: took %s", path, d)
		}
	}
}
