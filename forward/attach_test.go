package forward

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/scope"
)

func TestCheckPlacement(t *testing.T) {
	res := catalog.Resource{ID: "R", Sites: []string{"paris", "berlin"},
		PerSite: map[string]catalog.SiteView{"paris": {LocalID: "1"}, "berlin": {}}}
	lone := catalog.Resource{ID: "L", Sites: []string{"paris"}, PerSite: map[string]catalog.SiteView{"paris": {LocalID: "1"}}}
	for _, tc := range []struct {
		name       string
		res        catalog.Resource
		self, site string
		attach     bool
		known      bool
		want       error
	}{
		{"attach a new site", res, "paris", "rome", true, true, nil},
		{"attach an unknown site", res, "paris", "tokyo", true, false, scope.ErrUnknownSite},
		{"attach a site that holds it", res, "paris", "berlin", true, true, ErrAlreadyThere},
		{"attach self", res, "paris", "paris", true, true, ErrAlreadyThere},
		{"attach from a site without a copy", res, "berlin", "rome", true, true, ErrNotThere},
		{"detach a holder", res, "paris", "berlin", false, true, nil},
		{"detach a holder the membership forgot", res, "paris", "berlin", false, false, nil},
		{"detach a site that does not hold it", res, "paris", "rome", false, true, ErrNotThere},
		{"detach an unknown site", res, "paris", "tokyo", false, false, scope.ErrUnknownSite},
		{"detach self", res, "paris", "paris", false, true, ErrDetachSelf},
		{"detach the last site", lone, "paris", "paris", false, true, ErrDetachSelf},
	} {
		err := checkPlacement(tc.res, tc.self, tc.site, tc.attach, tc.known)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestNextSites(t *testing.T) {
	for _, tc := range []struct {
		current []string
		site    string
		attach  bool
		want    []string
	}{
		{[]string{"paris", "berlin"}, "rome", true, []string{"paris", "berlin", "rome"}},
		{[]string{"paris", "berlin", "rome"}, "rome", true, []string{"paris", "berlin", "rome"}},
		{[]string{"paris", "rome", "berlin"}, "rome", false, []string{"paris", "berlin"}},
		{[]string{"paris", "berlin"}, "rome", false, []string{"paris", "berlin"}},
	} {
		in := slices.Clone(tc.current)
		if got := nextSites(in, tc.site, tc.attach); !slices.Equal(got, tc.want) || !slices.Equal(in, tc.current) {
			t.Errorf("nextSites(%v, %s, %v) = %v (input now %v), want %v", tc.current, tc.site, tc.attach, got, in, tc.want)
		}
	}
}

func TestPlacementScope(t *testing.T) {
	for _, tc := range []struct {
		sites []string
		want  string
	}{
		{[]string{"paris"}, "{posts: paris}"},
		{[]string{"paris", "berlin", "rome"}, "{posts: paris & berlin & rome}"},
	} {
		got := placementScope("posts", tc.sites)
		if got != tc.want {
			t.Errorf("%v: %q, want %q", tc.sites, got, tc.want)
		}
		// It is a scope that places the service on exactly these sites.
		s, err := scope.Parse(got)
		if err != nil {
			t.Fatalf("%q: %v", got, err)
		}
		e, _ := s.For("posts")
		if sites := scope.Sites(e); !slices.Equal(sites, tc.sites) {
			t.Errorf("%q names %v", got, sites)
		}
	}
}

func TestPlacementError(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{nil, http.StatusOK, ""},
		{fmt.Errorf("x: %w", catalog.ErrNotFound), http.StatusNotFound, errcode.NotFound},
		{fmt.Errorf("%w: \"tokyo\"", scope.ErrUnknownSite), http.StatusBadRequest, errcode.UnknownSite},
		{fmt.Errorf("x: %w", ErrAlreadyThere), http.StatusBadRequest, errcode.BadInput},
		{fmt.Errorf("x: %w", ErrNotThere), http.StatusBadRequest, errcode.BadInput},
		{fmt.Errorf("x: %w", ErrDetachSelf), http.StatusBadRequest, errcode.BadInput},
		{fmt.Errorf("site rome: no stream: %w", errNotDelivered), http.StatusServiceUnavailable, errcode.Unreachable},
		{fmt.Errorf("x: %w", errPlaceRefused), http.StatusBadGateway, errcode.SiteFailed},
		{fmt.Errorf("x: %w: rome: read answer: stream reset", errPlaceUnknown), http.StatusGatewayTimeout, "outcome_unknown"},
	} {
		if status, code := placementError(tc.err); status != tc.status || code != tc.code {
			t.Errorf("%v: %d %s, want %d %s", tc.err, status, code, tc.status, tc.code)
		}
	}
}
