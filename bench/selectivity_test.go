package bench

import (
	"context"
	"testing"
)

func TestSelectivity(t *testing.T) {
	res, err := RunSelectivity(context.Background(), SelectivityOptions{Sites: 4, Resources: 30, ScopeSize: 2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.LeakedBytes != 0 {
		t.Fatalf("%d bytes of groups found at non-members", res.LeakedBytes)
	}
	for _, s := range res.Scoped.Sites {
		if s.Entries != s.Required {
			t.Errorf("scoped: %s holds %d entries, its scopes require %d", s.Site, s.Entries, s.Required)
		}
	}
	for _, s := range res.Full.Sites {
		if s.Entries != 2*res.Resources {
			t.Errorf("full: %s holds %d entries, want all %d", s.Site, s.Entries, 2*res.Resources)
		}
	}
	if res.Ratio <= 0 || res.Ratio >= 1 {
		t.Fatalf("scoped traffic is %.2f of full replication", res.Ratio)
	}
	t.Logf("scoped %d bytes, full %d bytes, ratio %.2f", res.Scoped.TotalBytes, res.Full.TotalBytes, res.Ratio)
}
