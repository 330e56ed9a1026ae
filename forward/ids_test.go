package forward

import (
	"net/http/httptest"
	"testing"
)

func TestShowGlobal(t *testing.T) {
	known := map[string]string{"1": "01HZZZZZZZZZZZZZZZZZZZZZZ1", "2": "01HZZZZZZZZZZZZZZZZZZZZZZ2"}
	lookup := func(l string) (string, bool) { g, ok := known[l]; return g, ok }
	for _, tc := range []struct{ name, in, out, gid string }{
		{"known item", `{"id": 1, "title": "a"}`, `{"id":"01HZZZZZZZZZZZZZZZZZZZZZZ1","title":"a"}`, "01HZZZZZZZZZZZZZZZZZZZZZZ1"},
		{"untracked item", `{"id": 7, "title": "b"}`, `{"_untracked":true,"id":7,"title":"b"}`, ""},
		{"list", `[{"id": 2}, {"id": "x"}, 3, {"name": "no id"}]`, `[{"id":"01HZZZZZZZZZZZZZZZZZZZZZZ2"},{"_untracked":true,"id":"x"},3,{"name":"no id"}]`, ""},
		{"empty list", `[]`, `[]`, ""},
		{"not JSON", `<html>`, `<html>`, ""},
		{"scalar", `42`, `42`, ""},
	} {
		got, gid := showGlobal([]byte(tc.in), "id", lookup)
		if string(got) != tc.out || gid != tc.gid {
			t.Errorf("%s: %s %q, want %s %q", tc.name, got, gid, tc.out, tc.gid)
		}
	}
}

func TestLocalIDRefusal(t *testing.T) {
	gid := "01HZZZZZZZZZZZZZZZZZZZZZZ1"
	for _, tc := range []struct {
		method, path string
		hop          string
		required     []string
		refused      bool
	}{
		{"GET", "/posts/3", "", []string{"paris"}, false},
		{"GET", "/posts/3", "", []string{"paris", "berlin"}, true},
		{"PUT", "/posts/3", "", []string{"paris"}, true},
		{"DELETE", "/posts/3", "", []string{"paris"}, true},
		{"DELETE", "/posts/3", "berlin", []string{"paris"}, false}, // a member site's own request
		{"PUT", "/posts/" + gid, "", []string{"paris"}, false},
		{"POST", "/posts", "", []string{"paris", "berlin"}, false},
	} {
		svc := Service{Name: "posts", IDField: "id"}
		req := &request{r: httptest.NewRequest(tc.method, "/svc/posts"+tc.path, nil), svc: svc, route: svc.routeOf(tc.path), hop: tc.hop}
		if msg, refused := localIDRefusal(req, tc.required); refused != tc.refused {
			t.Errorf("%s %s hop=%q on %v: refused %v (%s)", tc.method, tc.path, tc.hop, tc.required, refused, msg)
		}
	}
}
