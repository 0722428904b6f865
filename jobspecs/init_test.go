package jobspecs

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// appConfigValue reads job > group > task "app" > config > attr from a
// generated jobspec, to prove user input lands in it verbatim.
func appConfigValue(t *testing.T, src []byte, attr string) string {
	t.Helper()
	f, diags := hclsyntax.ParseConfig(src, "starter.nomad.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	job := blockOf(f.Body.(*hclsyntax.Body), "job")
	for _, task := range blocksOf(blockOf(job.Body, "group").Body, "task") {
		if blockName(task) != "app" {
			continue
		}
		v, diags := attrOf(blockOf(task.Body, "config"), attr).Expr.Value(nil)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		return v.AsString()
	}
	t.Fatal("no app task")
	return ""
}

func TestStarterValidatesClean(t *testing.T) {
	cases := []struct {
		opts     StarterOptions
		wantName string
	}{
		{StarterOptions{Image: "bedrock-demo:latest", Port: 8080, Data: "/data"}, "bedrock-demo"},
		{StarterOptions{Image: "ghcr.io/acme/Wiki_App:1.2", Port: 3000, Data: "/var/lib/wiki/", Count: 5}, "wiki-app"},
		{StarterOptions{Image: "registry.local:5000/team/app@sha256:abc", Port: 1, Data: "/srv", Name: "my-app"}, "my-app"},
		{StarterOptions{Image: "app:1", Port: 65535, Data: `/srv/"odd" ${dir} %{x} \ path`}, "app"},
	}
	for _, tc := range cases {
		t.Run(tc.opts.Image, func(t *testing.T) {
			src, err := Starter(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			diags, err := Validate("starter.nomad.hcl", src, ValidateOptions{})
			if err != nil || len(diags) != 0 {
				t.Fatalf("starter does not validate clean (err %v):\n%v\n%s", err, diags, src)
			}
			if !strings.Contains(string(src), "job \""+tc.wantName+"\" {") {
				t.Errorf("job name %q missing:\n%s", tc.wantName, src)
			}
			if got := appConfigValue(t, src, "image"); got != tc.opts.Image {
				t.Errorf("image %q, want %q", got, tc.opts.Image)
			}
			wantData := strings.TrimSuffix(tc.opts.Data, "/")
			if got := appConfigValue(t, src, "data"); got != wantData {
				t.Errorf("data %q, want %q", got, wantData)
			}
		})
	}
}

func TestRunInit(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		code      int
		stderrHas string
	}{
		{name: "ok", args: []string{"--image", "bedrock-demo:latest", "--port", "8080", "--data", "/data"}, code: 0},
		{name: "ok with name", args: []string{"-image=nginx:1", "-port=80", "-data=/usr/share/nginx/html", "-name=web"}, code: 0},
		{name: "missing image", args: []string{"--port", "8080", "--data", "/data"}, code: 2, stderrHas: "init: starter jobspec: --image is required"},
		{name: "bad port", args: []string{"--image", "a:1", "--port", "0", "--data", "/data"}, code: 2, stderrHas: "--port must be between 1 and 65535, got 0"},
		{name: "relative data", args: []string{"--image", "a:1", "--port", "80", "--data", "data"}, code: 2, stderrHas: `--data must be an absolute directory below /, got "data"`},
		{name: "root data", args: []string{"--image", "a:1", "--port", "80", "--data", "/"}, code: 2, stderrHas: `--data must be an absolute directory below /, got "/"`},
		{name: "bad name", args: []string{"--image", "a:1", "--port", "80", "--data", "/d", "--name", "My App"}, code: 2, stderrHas: `--name "My App" must be lowercase letters, digits and dashes`},
		{name: "small count", args: []string{"--image", "a:1", "--port", "80", "--data", "/d", "--count", "2"}, code: 2, stderrHas: "--count must be at least 3, got 2"},
		{name: "quote in image", args: []string{"--image", `a"b`, "--port", "80", "--data", "/d"}, code: 2, stderrHas: "is not an image reference"},
		{name: "extra args", args: []string{"--image", "a:1", "--port", "80", "--data", "/d", "extra"}, code: 2, stderrHas: "init: unexpected arguments: extra"},
		{name: "port not a number", args: []string{"--image", "a:1", "--port", "http", "--data", "/d"}, code: 2, stderrHas: `invalid value "http" for flag -port`},
		{name: "help", args: []string{"-h"}, code: 0, stderrHas: "Usage: nomad-driver-bedrock init"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := RunInit(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.code, stderr.String())
			}
			if tc.stderrHas != "" && !strings.Contains(stderr.String(), tc.stderrHas) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.stderrHas)
			}
			if code != 0 || tc.name == "help" {
				if stdout.Len() != 0 {
					t.Errorf("a failed init must print no jobspec, got %q", stdout.String())
				}
				return
			}
			diags, err := Validate("init.nomad.hcl", stdout.Bytes(), ValidateOptions{})
			if err != nil || len(diags) != 0 {
				t.Errorf("init output does not validate clean (err %v): %v", err, diags)
			}
		})
	}
}

func TestHCLString(t *testing.T) {
	cases := map[string]string{
		"plain":     `"plain"`,
		`a"b\c`:     `"a\"b\\c"`,
		"${x} %{y}": `"$${x} %%{y}"`,
		"$ %":       `"$ %"`,
		"tab\tnl\n": `"tab\tnl\n"`,
		"\x01":      `"\u0001"`,
	}
	for in, want := range cases {
		if got := hclString(in); got != want {
			t.Errorf("hclString(%q) = %s, want %s", in, got, want)
		}
	}
}
