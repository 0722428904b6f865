package driver

import "testing"

func TestLastSyncerError(t *testing.T) {
	cases := []struct{ name, logs, want string }{
		{"hclog error with its error field",
			`{"@level":"info","@message":"starting"}` + "\n" +
				`{"@level":"error","@message":"election unavailable","error":"lease: create Consul session: connection refused (no Consul agent answers at 127.0.0.1:8500)"}` + "\n",
			"election unavailable: lease: create Consul session: connection refused (no Consul agent answers at 127.0.0.1:8500)"},
		{"the last error wins over earlier ones and later info lines",
			`{"@level":"error","@message":"old"}` + "\n" + `{"@level":"error","@message":"new"}` + "\n" + `{"@level":"info","@message":"bye"}`,
			"new"},
		{"a plain usage line", "syncer: -job is required with -consul\n", "syncer: -job is required with -consul"},
		{"nothing to tell", `{"@level":"info","@message":"stopped"}`, ""},
	}
	for _, c := range cases {
		if got := lastSyncerError(c.logs); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}
