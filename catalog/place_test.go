package catalog

import (
	"context"
	"slices"
	"testing"
)

// Place writes the placement with the version it is given: placements
// stamped elsewhere (the attached site's clock) win by their version
// whatever order they are written in; the scope shown is the new one, the
// scope the resource was created with is kept beside it, and so is the
// version each site was detached at.
func TestPlaceOrdersByTheGivenVersion(t *testing.T) {
	net := newMemNet()
	a := newTestCatalog(t, net.store("a"), "a")
	b := newTestCatalog(t, net.store("b"), "b")
	ctx := context.Background()
	id := create(t, a, "posts", []string{"a", "b"}, map[string]string{"a": "1", "b": "2"})
	base := a.Clock().Now()
	later, earlier := Timestamp{Wall: base.Wall + 20}, Timestamp{Wall: base.Wall + 10}
	// b writes the later placement first, a the earlier one after.
	if err := b.Place(ctx, id, Placement{Sites: []string{"a", "b", "c"}, LocalIDs: map[string]string{"a": "1", "b": "2", "c": "3"},
		Scope: "{posts: a & b & c}", Version: later}); err != nil {
		t.Fatal(err)
	}
	if err := a.Place(ctx, id, Placement{Sites: []string{"a", "b"}, LocalIDs: map[string]string{"a": "1", "b": "2"},
		Scope: "{posts: a & b}", Version: earlier, Detached: map[string]Timestamp{"c": earlier}}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*Catalog{a, b} {
		r := mustGet(t, x, id)
		if !slices.Equal(r.Sites, []string{"a", "b", "c"}) || r.Scope != "{posts: a & b & c}" || r.CreatedScope != "{posts: a & b}" ||
			r.PerSite["c"].LocalID != "3" || r.Detached != nil {
			t.Fatalf("%s: %+v", x.Self(), r)
		}
	}
	// A detach at a later version wins, and is remembered.
	detached := Timestamp{Wall: base.Wall + 30}
	if err := a.Place(ctx, id, Placement{Sites: []string{"a", "b"}, LocalIDs: map[string]string{"a": "1", "b": "2"},
		Scope: "{posts: a & b}", Version: detached, Detached: map[string]Timestamp{"c": detached}}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*Catalog{a, b} {
		r := mustGet(t, x, id)
		if !slices.Equal(r.Sites, []string{"a", "b"}) || r.Scope != "{posts: a & b}" || r.CreatedScope != "{posts: a & b}" || r.Detached["c"] != detached {
			t.Fatalf("%s after the detach: %+v", x.Self(), r)
		}
	}
}
