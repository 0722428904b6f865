package plugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

type nested struct {
	Port string   `msgpack:"port"`
	Tags []string `msgpack:"tags"`
}

type sample struct {
	Image  string            `msgpack:"image"`
	Memory int64             `msgpack:"memory"`
	Labels map[string]string `msgpack:"labels"`
	Syncer *nested           `msgpack:"syncer"`
	Mounts []nested          `msgpack:"mount"`
	Flag   bool              `msgpack:"flag"`
}

func enc(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeConfig(t *testing.T) {
	in := map[string]any{
		"image":  "app:1",
		"memory": 64,
		"labels": []map[string]string{{"a": "1"}, {"b": "2"}},
		"syncer": map[string]any{"port": "sync", "tags": []string{"x"}},
		"mount":  []map[string]any{{"port": "p1", "tags": nil}},
		"flag":   nil,
	}
	var s sample
	if err := DecodeConfig(enc(t, in), &s); err != nil {
		t.Fatal(err)
	}
	if s.Image != "app:1" || s.Memory != 64 || s.Labels["a"] != "1" || s.Labels["b"] != "2" ||
		s.Syncer == nil || s.Syncer.Port != "sync" || len(s.Mounts) != 1 || s.Mounts[0].Port != "p1" {
		t.Fatalf("decoded %+v", s)
	}
}

func TestDecodeConfigErrorsNameTheField(t *testing.T) {
	cases := []struct {
		in   map[string]any
		want string
	}{
		{map[string]any{"memory": "lots"}, "memory: want a whole number"},
		{map[string]any{"imgae": "x"}, "imgae: unknown field"},
		{map[string]any{"syncer": map[string]any{"prot": "x"}}, "syncer.prot: unknown field"},
		{map[string]any{"syncer": map[string]any{"tags": "x"}}, "syncer.tags: want a list of string"},
		{map[string]any{"mount": []map[string]any{{"port": 5}}}, "mount[0].port: want a string"},
		{map[string]any{"labels": 3}, "labels: want a map of string"},
	}
	for _, c := range cases {
		var s sample
		err := DecodeConfig(enc(t, c.in), &s)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrConfig) {
			t.Errorf("%v: got %v, want %q", c.in, err, c.want)
		}
	}
}

func TestDecodeConfigNeedsStructPointer(t *testing.T) {
	var s sample
	if err := DecodeConfig([]byte{0x80}, s); err == nil {
		t.Fatal("want an error for a non-pointer")
	}
	if err := DecodeConfig(nil, &s); err != nil {
		t.Fatalf("empty config is no config: %v", err)
	}
}
