package forward

import (
	"strings"
	"testing"
	"time"

	"cheops/scope"
)

// The holders of a resource a read with a client's scope tries, in
// order: ';' its first alternative that holds the resource, '|' the
// nearest holder, '&' its holders nearest first, then the other holders
// nearest first; without a scope, or with one that names no reachable
// holder, nearest first.
func TestReadOrderFollowsTheScope(t *testing.T) {
	// Seen from b: b itself, then c (5 ms), a (20 ms), d (40 ms); e
	// unmeasured.
	view := func(down ...string) scope.View {
		v := scope.View{Local: "b", Sites: map[string]scope.SiteInfo{
			"a": {Name: "a", State: scope.Up},
			"b": {Name: "b", State: scope.Up, RTT: map[string]time.Duration{"a": 20 * time.Millisecond, "c": 5 * time.Millisecond, "d": 40 * time.Millisecond}},
			"c": {Name: "c", State: scope.Up},
			"d": {Name: "d", State: scope.Up},
			"e": {Name: "e", State: scope.Up},
		}}
		return withDown(v, down)
	}
	for _, tc := range []struct {
		scope   string // "" for none
		holders string
		down    []string
		want    string
	}{
		{"", "a b", nil, "b a"},
		{"{svc: a ; b}", "a b", nil, "a b"},
		{"{svc: b ; a}", "a b", nil, "b a"},
		{"{svc: a | b}", "a b", nil, "b a"},
		{"{svc: a | d}", "a d", nil, "a d"},
		{"{svc: d | a}", "a d", nil, "a d"},
		// ';' skips an alternative that does not hold the resource, and
		// one whose holder is not reachable (not a holder then).
		{"{svc: c ; d ; a}", "a d", nil, "d a"},
		{"{svc: d ; a}", "a", []string{"d"}, "a"},
		// '&': the scope's holders nearest first, then the others.
		{"{svc: a & d}", "a b d", nil, "a d b"},
		{"{svc: (a & d) ; b}", "a b d", nil, "a d b"},
		// '|' between compound terms: the nearer term's holders, then the
		// standby's.
		{"{svc: (a & d) | (b & c)}", "a b c d", nil, "b c a d"},
		{"{svc: *}", "a d e", nil, "a d e"},
		{"{svc: e ; d}", "d e", nil, "e d"},
		// A scope that names no holder: the catalog's order.
		{"{svc: c}", "a d", nil, "a d"},
		{"{svc: c ; e}", "a d", nil, "a d"},
		// A scope that does not bind the service leaves it alone too.
		{"{other: a ; b}", "a b", nil, "b a"},
	} {
		var sc *scope.Scope
		if tc.scope != "" {
			var err error
			if sc, err = scope.Parse(tc.scope); err != nil {
				t.Fatal(err)
			}
		}
		got := strings.Join(readOrder(sc, "svc", view(tc.down...), strings.Fields(tc.holders)), " ")
		if got != tc.want {
			t.Errorf("%q over holders %s (down %v): %s, want %s", tc.scope, tc.holders, tc.down, got, tc.want)
		}
	}
}
