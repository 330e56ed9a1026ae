package forward

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"testing"
)

// spliceCases are answers spliceGlobal must show as showGlobal does.
var spliceCases = []string{
	`{"id": 1, "title": "a"}`,
	`{"id": 7, "title": "b"}`,
	`[{"id": 2}, {"id": "x"}, 3, {"name": "no id"}]`,
	`[]`, `{}`, `<html>`, `42`, ` {"id":"1"} `,
	`{"title": "a \"quoted\" }", "nested": {"id": 7, "list": [1, {"id": 2}]}, "id": 2}`,
	`{"id": null}`, `{"id": ""}`, `{"id": true}`, `{"id": -3}`, `{"id": 1.5e3}`,
	`{"id": "01HZZZZZZZZZZZZZZZZZZZZZZ9"}`,
	`[{"id": 1}, {"id": 1, "id": 2}]`, `{"id": "a\u0031"}`, `{"_untracked": false, "id": 7}`,
	`{"id": 1} trailing`, `[{"id": 1},]`, "{\n  \"id\": 7,\n  \"title\": \"<b>&\"\n}",
}

func showLookup(l string) (string, bool) {
	g, ok := map[string]string{"1": "01HZZZZZZZZZZZZZZZZZZZZZZ1", "2": "01HZZZZZZZZZZZZZZZZZZZZZZ2"}[l]
	return g, ok
}

// sameShow reports whether spliceGlobal's answer means what showGlobal's
// does (or spliceGlobal declined it).
func sameShow(t *testing.T, in string) {
	t.Helper()
	got, gid, ok := spliceGlobal([]byte(in), "id", showLookup)
	if !ok {
		return
	}
	want, wantGID := showGlobal([]byte(in), "id", showLookup)
	if gid != wantGID {
		t.Errorf("%s: global id %q, want %q", in, gid, wantGID)
	}
	var g, w any
	if json.Unmarshal(want, &w) != nil {
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %s, want it unchanged", in, got)
		}
		return
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: spliced answer %s is not JSON: %v", in, got, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s: %s, want %s", in, got, want)
	}
}

func TestSpliceGlobal(t *testing.T) {
	for _, in := range spliceCases {
		sameShow(t, in)
	}
	// The application's bytes are kept around the edits.
	got, _, _ := spliceGlobal([]byte("{\n  \"id\": 1,\n  \"title\": \"<b>\"\n}"), "id", showLookup)
	if want := "{\n  \"id\": \"01HZZZZZZZZZZZZZZZZZZZZZZ1\",\n  \"title\": \"<b>\"\n}"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func FuzzSpliceGlobal(f *testing.F) {
	for _, in := range spliceCases {
		f.Add(in)
	}
	f.Fuzz(sameShow)
}

func TestStreamsBody(t *testing.T) {
	for _, tc := range []struct {
		method, path, contentType string
		streams                   bool
	}{
		{"PUT", "/blob", "application/octet-stream", true},
		{"PUT", "/blob", "text/plain; charset=utf-8", true},
		{"PUT", "/blob", "application/json", false},            // checked as JSON
		{"PUT", "/blob", "", false},                            // no content type: read as before
		{"PUT", "/posts/7", "application/octet-stream", false}, // an item: a replicated write
		{"POST", "/blob", "application/octet-stream", false},   // a create: recorded
	} {
		svc := Service{Name: "items", IDField: "id"}
		r := httptest.NewRequest(tc.method, "/svc/items"+tc.path, nil)
		if tc.contentType != "" {
			r.Header.Set("Content-Type", tc.contentType)
		}
		req := &request{r: r, svc: svc, route: svc.routeOf(tc.path)}
		if got := streamsBody(req); got != tc.streams {
			t.Errorf("%s %s (%s): streams %v, want %v", tc.method, tc.path, tc.contentType, got, tc.streams)
		}
	}
}
