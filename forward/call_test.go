package forward

import (
	"testing"

	"cheops/scope"
)

// TestOwnScope: the scope Call sends to this site's application, the
// site alone, is printed as ownScope gives it.
func TestOwnScope(t *testing.T) {
	for _, site := range []string{"paris", "rome", "site-2", "a_b"} {
		s := &scope.Scope{Bindings: []scope.Binding{{Expr: scope.Site{Name: site}}}}
		if got := ownScope(site); got != s.String() {
			t.Errorf("ownScope(%q) = %q, the scope prints %q", site, got, s.String())
		}
	}
}
