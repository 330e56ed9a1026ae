package forward

import (
	"fmt"
	"testing"

	"cheops/scope"
)

// TestScopeCache: a scope text parses to the same scope and canonical
// form every time, a bad one is refused every time and never kept, and
// the cache stops growing at its bound.
func TestScopeCache(t *testing.T) {
	var c scopeCache
	for range 2 {
		s, canon, err := c.parse("{posts:  paris|berlin}")
		if err != nil {
			t.Fatal(err)
		}
		want, _ := scope.Parse("{posts: paris | berlin}")
		if canon != want.String() || s.String() != want.String() {
			t.Fatalf("canonical %q, scope %q, want %q", canon, s.String(), want.String())
		}
	}
	for range 2 {
		if _, _, err := c.parse("{posts: paris |"); err == nil {
			t.Fatal("a bad scope parsed")
		}
	}
	if n := c.n.Load(); n != 1 {
		t.Fatalf("%d scopes kept, want 1", n)
	}
	for i := range scopeCacheMax + 10 {
		text := fmt.Sprintf("{s%d: paris}", i)
		_, canon, err := c.parse(text)
		if err != nil || canon != text {
			t.Fatalf("%q: %q %v", text, canon, err)
		}
	}
	if n := c.n.Load(); n != scopeCacheMax {
		t.Fatalf("%d scopes kept, want the bound %d", n, scopeCacheMax)
	}
}
