package agent

import (
	"errors"
	"path/filepath"
	"testing"

	"cheops/scope"
)

func TestScopedPath(t *testing.T) {
	names := map[string]string{"eu": "{glance: paris & berlin}", "p": "{posts: paris}"}
	lookup := func(n string) (string, bool) { s, ok := names[n]; return s, ok }
	for _, tc := range []struct {
		in, want string
		err      error
	}{
		{"/s/eu/svc/glance/v2/images", "/scope/%7Bglance:%20paris%20&%20berlin%7D/svc/glance/v2/images", nil},
		{"/s/p/svc/posts/posts/a%2Fb", "/scope/%7Bposts:%20paris%7D/svc/posts/posts/a%2Fb", nil},
		{"/s/p/", "/scope/%7Bposts:%20paris%7D/", nil},
		{"/s/nope/svc/posts/posts", "", ErrUnknownScope},
		{"/s/", "", ErrUnknownScope},
		{"/scope/x/svc/posts", "", ErrUnknownScope},
	} {
		got, err := scopedPath(tc.in, lookup)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("scopedPath(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestNamedScopesTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), ScopesFile)
	if _, err := loadNamedScopes(path, map[string]string{"bad name": "{a: b}"}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("bad configured name: %v", err)
	}
	if _, err := loadNamedScopes(path, map[string]string{"x": "{a: "}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("bad configured scope: %v", err)
	}
	n, err := loadNamedScopes(path, map[string]string{"eu": "{glance:paris&berlin}"})
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := n.Lookup("eu"); !ok || c != "{glance: paris & berlin}" {
		t.Fatalf("configured name resolves to %q, %v", c, ok)
	}
	for _, tc := range []struct {
		name, text string
		err        error
	}{
		{"eu", "{glance: rome}", ErrConfiguredScope},
		{"1x", "{glance: rome}", ErrBadScopeName},
		{"a%b", "{glance: rome}", ErrBadScopeName},
		{"r", "{glance: ", scope.ErrSyntax},
	} {
		if _, err := n.Define(tc.name, tc.text); !errors.Is(err, tc.err) {
			t.Errorf("Define(%q, %q) = %v, want %v", tc.name, tc.text, err, tc.err)
		}
	}
	if _, err := n.Undefine("eu"); !errors.Is(err, ErrConfiguredScope) {
		t.Fatalf("undefine a configured name: %v", err)
	}
	if _, err := n.Undefine("r"); !errors.Is(err, ErrUnknownScope) {
		t.Fatalf("undefine an unknown name: %v", err)
	}
	if ns, err := n.Define("r", "{glance: rome}"); err != nil || ns.Scope != "{glance: rome}" || ns.Source != ScopeFromAPI {
		t.Fatalf("define: %+v, %v", ns, err)
	}
	if _, err := n.Define("r", "{glance: rome | paris}"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Define("gone", "{glance: rome}"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Undefine("gone"); err != nil {
		t.Fatal(err)
	}
	// A restart reads the names the API defined; the configuration's are
	// the new run's.
	n2, err := loadNamedScopes(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := n2.List()
	if len(got) != 1 || got[0] != (NamedScope{Name: "r", Scope: "{glance: rome | paris}", Source: ScopeFromAPI}) {
		t.Fatalf("after restart: %+v", got)
	}
	// A configured name hides a saved one of the same name.
	n3, err := loadNamedScopes(path, map[string]string{"r": "{glance: berlin}"})
	if err != nil {
		t.Fatal(err)
	}
	if got := n3.List(); len(got) != 1 || got[0].Source != ScopeFromConfig || got[0].Scope != "{glance: berlin}" {
		t.Fatalf("configured over saved: %+v", got)
	}
}

func TestParseScopeName(t *testing.T) {
	if n, s, err := ParseScopeName("eu={glance: a & b}"); err != nil || n != "eu" || s != "{glance: a & b}" {
		t.Fatalf("%q %q %v", n, s, err)
	}
	for _, bad := range []string{"eu", "=x", "eu= "} {
		if _, _, err := ParseScopeName(bad); !errors.Is(err, ErrBadScopeName) {
			t.Errorf("ParseScopeName(%q) = %v", bad, err)
		}
	}
}
