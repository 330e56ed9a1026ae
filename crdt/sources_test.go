package crdt

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// After a heal, a site asks for a branch the member that announced it,
// not first a member of its own side that lacks it: c, connected to a all
// along, hears of b's writes from b and fetches them in one request (the
// members in their fixed order, a first, took two: one to a, answered
// empty, then one to b).
func TestBranchIsFetchedFromItsAnnouncerFirst(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.startAll("a", "b", "c")
	ctx := context.Background()
	abc := []string{"a", "b", "c"}
	if err := n.sites["a"].m.Put(ctx, abc, "/before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"b", "c"} {
		eventually(t, 10*time.Second, s+" has /before", func() error { return hasValue(n.sites[s], abc, "/before", "1") })
	}
	n.partition([]string{"a", "c"}, []string{"b"})
	const writes = 20
	for i := range writes {
		if err := n.sites["b"].m.Put(ctx, abc, fmt.Sprintf("/w/%d", i), []byte("b")); err != nil {
			t.Fatal(err)
		}
	}
	c := n.sites["c"]
	before := counterValue(c.m.metrics.fetches)
	// Only b and c meet again; a stays cut from b.
	n.heal([]string{"c"}, []string{"b"})
	eventually(t, 10*time.Second, "c holds b's writes", func() error {
		return hasValue(c, abc, fmt.Sprintf("/w/%d", writes-1), "b")
	})
	if got := counterValue(c.m.metrics.fetches) - before; got != 1 {
		t.Fatalf("c sent %v block requests for b's branch, want 1 (to b, its announcer)", got)
	}
}
