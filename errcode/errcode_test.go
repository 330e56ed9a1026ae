package errcode

import (
	"errors"
	"fmt"
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
