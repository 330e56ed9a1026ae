package errcode

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"cheops/scope"
)

func TestOf(t *testing.T) {
	view := scope.View{Local: "paris", Sites: map[string]scope.SiteInfo{
		"paris": {Name: "paris", State: scope.Up}, "rome": {Name: "rome", State: scope.Down}}}
	plan := func(src, svc string) error {
		s, err := scope.Parse(src)
		if err != nil {
			return err
		}
		_, err = s.Plan(svc, view)
		return err
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{plan("{posts: nowhere}", "posts"), UnknownSite},
		{plan("{post: paris}", "posts"), UnboundService},
		{plan("{posts: paris &}", "posts"), BadScope},
		{plan("{posts: rome}", "posts"), Unreachable},
		{fmt.Errorf("wrapped: %w", plan("{posts: nowhere}", "posts")), UnknownSite},
		{errors.New("other"), ""},
		{nil, ""},
	} {
		if got := Of(tc.err); got != tc.want {
			t.Errorf("Of(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// Write answers with the status, a JSON content type and a Body.
func TestWrite(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, http.StatusBadRequest, UnknownSite, `unknown site "tokyo"`)
	if rec.Code != http.StatusBadRequest || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var b Body
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatal(err)
	}
	if b != (Body{Error: `unknown site "tokyo"`, Code: UnknownSite}) {
		t.Errorf("body %+v", b)
	}
}
