package crdt

import (
	"context"
	"testing"
)

// TestScanByResourcePrefix: a scan under one resource's prefix returns
// exactly that resource's keys (the catalog's audit relies on it).
func TestScanByResourcePrefix(t *testing.T) {
	n := newNet(t, "a")
	n.startAll("a")
	ctx := context.Background()
	a := []string{"a"}
	for _, k := range []string{"/r/X1/meta@a", "/r/X1/site/a", "/r/X12/site/a", "/r/Y/site/a"} {
		if err := n.sites["a"].m.Put(ctx, a, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := n.sites["a"].m.Scan(ctx, "/r/X1/", func(_ []string, key string, _ []byte) error {
		got = append(got, key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("scan /r/X1/: %v, want the two keys of X1", got)
	}
}
