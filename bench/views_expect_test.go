package bench

import (
	"testing"
	"time"

	"cheops/catalog"
)

// The streams say the replicas are complete once every site got what it
// lacked at the heal: the resources it did not hold and the operations
// another replica of them held; not before, and not on operations or
// resources of other replica sets.
func TestViewsExpectWhatEachReplicaLacked(t *testing.T) {
	heal := time.Now()
	v := &viewTimeline{start: heal, visible: map[string]map[string]time.Time{"a": {}, "b": {}, "c": {}},
		ops: map[string]map[string]time.Time{"a": {}, "b": {}, "c": {}}, resyncs: map[string]int{}}
	res := func(id string, ops ...string) catalog.Resource {
		r := catalog.Resource{ID: id}
		for _, o := range ops {
			r.Operations = append(r.Operations, catalog.Operation{ID: o})
		}
		return r
	}
	// r1 on {a, b}: each side wrote one operation; r2 on {a, c}, created
	// on c during the cut; r3 on {b, c}, complete already.
	before := map[string][]catalog.Resource{
		"a": {res("r1", "o0", "oa")},
		"b": {res("r1", "o0", "ob"), res("r3", "o3")},
		"c": {res("r2", "o2"), res("r3", "o3")},
	}
	want := map[string][]string{"r1": {"a", "b"}, "r2": {"a", "c"}, "r3": {"b", "c"}}
	v.expect(before, want)
	event := func(site string, ch catalog.Change) {
		at := time.Now()
		switch ch.Kind {
		case catalog.KindMeta:
			v.visible[site][ch.ID] = at
		case catalog.KindOp:
			v.ops[site][ch.Op] = at
		}
	}
	if n := v.lacking(); n != 3 {
		t.Fatalf("%d pairs lacking at the heal, want 3 (r1 at a and b, r2 at a)", n)
	}
	event("a", catalog.Change{ID: "r1", Kind: catalog.KindOp, Op: "ob"})
	event("b", catalog.Change{ID: "r1", Kind: catalog.KindOp, Op: "oa"})
	event("a", catalog.Change{ID: "r2", Kind: catalog.KindOp, Op: "o2"})
	if n := v.lacking(); n != 1 {
		t.Fatalf("%d pairs lacking, want 1 (r2 is not visible at a yet)", n)
	}
	event("a", catalog.Change{ID: "r2", Kind: catalog.KindMeta})
	if n := v.lacking(); n != 0 {
		t.Fatalf("%d pairs lacking, want 0", n)
	}
}
