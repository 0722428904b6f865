package core

import (
	"encoding/json"
	"testing"
)

// The JSON of these values is part of the announce protocol, the lock and candidacy values
// and state.json: it must not change.
func TestJSONIsTheWireFormat(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{Position{Term: 3, Seq: 9}, `{"term":3,"seq":9}`},
		{Progress{FilesTotal: 1, FilesDone: 2, BytesTotal: 3, BytesDone: 4, Done: true},
			`{"files_total":1,"files_done":2,"bytes_total":3,"bytes_done":4,"done":true}`},
		{RoleCandidate, `"candidate"`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("json(%#v) = %s, %v; want %s", tc.v, b, err, tc.want)
		}
	}
}

func TestPositionOrder(t *testing.T) {
	a, b, c := Position{Term: 1, Seq: 9}, Position{Term: 2, Seq: 1}, Position{Term: 2, Seq: 2}
	if !a.Less(b) || !b.Less(c) || c.Less(b) || b.Less(b) || !b.AtLeast(b) || a.AtLeast(c) {
		t.Fatal("positions order by term, then sequence")
	}
	if s := c.String(); s != "2/2" {
		t.Fatalf("String() = %q", s)
	}
}

func TestPercentIs100OnlyWhenDone(t *testing.T) {
	if p := (Progress{BytesTotal: 100, BytesDone: 100}).Percent(); p != 99 {
		t.Fatalf("all bytes copied but not done: %d%%, want 99%%", p)
	}
	if p := (Progress{Done: true}).Percent(); p != 100 {
		t.Fatalf("done: %d%%", p)
	}
	if r := (Assignment{Master: true}).Role(); r != RoleMaster {
		t.Fatalf("Role() = %s", r)
	}
}
