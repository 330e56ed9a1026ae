package catalog

import (
	"context"
	"testing"
)

// FuzzApply feeds arbitrary keys and values, as a faulty or hostile member
// of a group could write them, to the catalog, then reports the key
// deleted: no panic, every resource it lists resolves, and the local-id
// index only points at resources this site holds.
func FuzzApply(f *testing.F) {
	const id = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
	f.Add("/r/"+id+"/meta", []byte(`{"id":"`+id+`","service":"s","sites":["a"]}`))
	f.Add("/r/"+id+"/meta@b", []byte(`{"id":"`+id+`","service":"s","sites":["b","c"],"version":{"wall":99}}`))
	f.Add("/r/"+id+"/meta@b", []byte(`{"id":"`+id+`","service":"s","sites":["a","a"],"version":{"wall":99}}`))
	f.Add("/r/"+id+"/op/x", []byte(`{"id":"x","at":{"wall":-1}}`))
	f.Add("/r/"+id+"/site/a", []byte(`{"site":"a","local_id":"7","applied":{"x":"superseded by y"},"at":{"wall":9223372036854775807}}`))
	f.Add("/r/"+id+"/site/b", []byte(`{"site":"b","local_id":"7","at":{"wall":1}}`))
	f.Add("/r/x/y/z/w", []byte(`[]`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		c, err := New(context.Background(), Config{Store: newMemNet().store("a"), Self: "a"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ab := []string{"a", "b"}
		c.apply(ab, "/r/"+id+"/meta@a", []byte(`{"id":"`+id+`","service":"s","sites":["a","b"],"local_ids":{"a":"1"}}`))
		c.apply(ab, key, value)
		check := func() {
			list, err := c.List(context.Background(), Filter{})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range list {
				if _, err := c.Get(context.Background(), r.ID); err != nil {
					t.Fatalf("listed %s but cannot get it: %v", r.ID, err)
				}
			}
			c.mu.RLock()
			defer c.mu.RUnlock()
			for k, gid := range c.byLocal {
				if e := c.entries[gid]; e == nil || !e.visible {
					t.Fatalf("index %v points at %s, not held", k, gid)
				}
			}
			for gid, e := range c.entries {
				if got, want := owes(e), owesResolved(e); got != want {
					t.Fatalf("%s: owes = %v, its resolved view says %v", gid, got, want)
				}
				if _, listed := c.owing[gid]; listed != owes(e) {
					t.Fatalf("%s: in the owing set = %v, owes = %v", gid, listed, owes(e))
				}
			}
		}
		check()
		c.applyDelete(ab, key)
		check()
	})
}

// owesResolved is what owes must answer: whether the resolved resource
// shows an operation pending at one of its sites.
func owesResolved(e *entry) bool {
	r, ok := e.resolve()
	if !ok {
		return false
	}
	for _, v := range r.PerSite {
		if len(v.Pending) > 0 {
			return true
		}
	}
	return false
}
