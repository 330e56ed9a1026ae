package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"cheops/internal/testkit"
)

// TestAuditFoldsInAChangeTheViewMissed: berlin's record saying it ran an
// owed create reaches paris' store but not paris' view; the audit reads
// the owing resource back from the store and the operation stops showing
// owed, and the repair is counted.
func TestAuditFoldsInAChangeTheViewMissed(t *testing.T) {
	net := newMemNet()
	cfg := DefaultConfig()
	cfg.Store, cfg.Self, cfg.GatherDelay, cfg.AuditInterval = net.store("paris"), "paris", time.Millisecond, 20*time.Millisecond
	paris := newTestCatalogConfig(t, cfg)
	ctx := context.Background()
	sites := []string{"paris", "berlin"}
	id := create(t, paris, "posts", sites, map[string]string{"paris": "1"}, "berlin")
	r, _ := paris.Get(ctx, id)
	if len(r.PerSite["berlin"].Pending) != 1 {
		t.Fatalf("berlin should owe the create: %+v", r.PerSite["berlin"])
	}
	auditCorrectsAMissedOutcome(t, paris, net.store("paris"), sites, id, r.Operations[0].ID, 5*time.Second)
}

// TestStaleOwingSkipsResourcesBeingCaughtUp: only a resource owing at two
// ticks with the same last change is audited.
func TestStaleOwingSkipsResourcesBeingCaughtUp(t *testing.T) {
	previous := map[string]uint64{"a": 3, "b": 4, "c": 5}
	now := map[string]uint64{"a": 3, "b": 9, "d": 6}
	if got := staleOwing(previous, now); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("staleOwing = %v, want [a]", got)
	}
	if got := staleOwing(nil, now); len(got) != 0 {
		t.Fatalf("first tick audits %v, want nothing", got)
	}
}

// TestAuditWaitsOneIntervalBeforeFolding: a value the store holds and the
// view lacks is only noted at the first audit (its notice may be on its
// way); when the notice arrives before the next audit, that audit counts
// it late and folds nothing in; when it never arrives, the next audit
// folds it in and counts a miss.
func TestAuditWaitsOneIntervalBeforeFolding(t *testing.T) {
	ctx := context.Background()
	for _, arrives := range []bool{true, false} {
		t.Run(fmt.Sprintf("notice arrives=%v", arrives), func(t *testing.T) {
			net := newMemNet()
			cfg := DefaultConfig()
			cfg.Store, cfg.Self, cfg.GatherDelay, cfg.AuditInterval = net.store("paris"), "paris", time.Millisecond, time.Hour
			paris := newTestCatalogConfig(t, cfg)
			sites := []string{"paris", "berlin"}
			id := create(t, paris, "posts", sites, map[string]string{"paris": "1"}, "berlin")
			r, _ := paris.Get(ctx, id)
			rec := SiteRecord{Site: "berlin", LocalID: "9", Status: StatusOK, Applied: map[string]string{r.Operations[0].ID: "201"}, At: paris.Clock().Now()}
			data, _ := json.Marshal(rec)
			net.store("paris").writeUnseen(sites, siteKey(id, "berlin"), data)

			paris.auditNoted = map[string][]byte{}
			if err := paris.audit(ctx, id, nil); err != nil {
				t.Fatal(err)
			}
			if got, _ := paris.Get(ctx, id); len(got.PerSite["berlin"].Pending) != 1 {
				t.Fatalf("the first audit folded the value in at once: %+v", got.PerSite["berlin"])
			}
			noted := paris.auditNoted
			if len(noted) != 1 {
				t.Fatalf("noted %d values, want berlin's record", len(noted))
			}
			if arrives {
				paris.apply(sites, siteKey(id, "berlin"), data)
			}
			paris.auditNoted = map[string][]byte{}
			if err := paris.audit(ctx, id, noted); err != nil {
				t.Fatal(err)
			}
			got, _ := paris.Get(ctx, id)
			if v := got.PerSite["berlin"]; len(v.Pending) != 0 || v.LocalID != "9" {
				t.Fatalf("berlin after the second audit: %+v", v)
			}
			wantLate, wantApplied := int64(0), int64(1)
			if arrives {
				wantLate, wantApplied = 1, 0
			}
			if paris.AuditLate() != wantLate || paris.AuditApplied() != wantApplied || paris.AuditRepairs() != wantApplied {
				t.Fatalf("late %d applied %d repairs %d, want late %d applied %d repairs %d",
					paris.AuditLate(), paris.AuditApplied(), paris.AuditRepairs(), wantLate, wantApplied, wantApplied)
			}
		})
	}
}

// TestAuditWaitsForAQuietView: a round runs when the view has not
// changed for a quarter of the interval, or after auditDeferrals rounds
// in a row waited.
func TestAuditWaitsForAQuietView(t *testing.T) {
	const iv = 2 * time.Second
	for _, c := range []struct {
		since    time.Duration
		deferred int
		want     bool
	}{
		{time.Hour, 0, true},
		{iv / 4, 0, true},
		{iv/4 - time.Millisecond, 0, false},
		{0, auditDeferrals - 1, false},
		{0, auditDeferrals, true},
	} {
		if got := auditNow(c.since, iv, c.deferred); got != c.want {
			t.Errorf("auditNow(%v since the last change, %d deferred) = %v, want %v", c.since, c.deferred, got, c.want)
		}
	}
}

// TestAuditBackoffSpacesCleanAudits: a resource that stays owing,
// unchanged, and that every audit finds clean is audited at rounds 1, 3,
// 7, 15, 31, 63, then every maxAuditSpacing rounds; changed, it is due
// at once again.
func TestAuditBackoffSpacesCleanAudits(t *testing.T) {
	b := auditBackoff{}
	var audited []int
	for round := 1; round <= 130; round++ {
		if b.due("a", 7, round) {
			audited = append(audited, round)
			b.clean("a", 7, round)
		}
	}
	if want := []int{1, 3, 7, 15, 31, 63, 95, 127}; !slices.Equal(audited, want) {
		t.Fatalf("audited at rounds %v, want %v", audited, want)
	}
	if !b.due("a", 8, 131) {
		t.Fatal("a resource that changed is not due at once")
	}
	b.forget(map[string]uint64{"b": 1})
	if len(b) != 0 {
		t.Fatalf("a resource that stopped owing is kept: %v", b)
	}
}

// TestAuditFindsAMissAfterCleanRounds: a change the view misses after
// the resource has been audited clean many times (its audits spaced out)
// is still folded in, within maxAuditSpacing rounds or so; and those
// rounds read the store far less than one audit per round.
func TestAuditFindsAMissAfterCleanRounds(t *testing.T) {
	net := newMemNet()
	cfg := DefaultConfig()
	const iv = 5 * time.Millisecond
	cfg.Store, cfg.Self, cfg.GatherDelay, cfg.AuditInterval = net.store("paris"), "paris", time.Millisecond, iv
	paris := newTestCatalogConfig(t, cfg)
	ctx := context.Background()
	sites := []string{"paris", "berlin"}
	id := create(t, paris, "posts", sites, map[string]string{"paris": "1"}, "berlin")
	store := net.store("paris")
	gets := func() int {
		net.mu.Lock()
		defer net.mu.Unlock()
		return store.gets
	}
	// One audit reads the resource's 4 keys (meta, operation, each
	// site's record); 6 audits: rounds 1 to 31 at least.
	start := time.Now()
	testkit.Eventually(t, 10*time.Second, "six audits", func() error {
		if n := gets(); n < 6*4 {
			return fmt.Errorf("%d reads", n)
		}
		return nil
	})
	if rounds := int(time.Since(start) / iv); rounds < 20 {
		t.Fatalf("six audits within %d rounds: not spaced out", rounds)
	}
	r, _ := paris.Get(ctx, id)
	auditCorrectsAMissedOutcome(t, paris, store, sites, id, r.Operations[0].ID, 10*time.Second)
}

// auditCorrectsAMissedOutcome writes berlin's outcome of op into paris's
// store without the view seeing it, and checks that the audit folds it
// in within the time given, as its one repair.
func auditCorrectsAMissedOutcome(t *testing.T, paris *Catalog, store *memStore, sites []string, id, op string, within time.Duration) {
	t.Helper()
	rec := SiteRecord{Site: "berlin", LocalID: "9", Status: StatusOK, Applied: map[string]string{op: "201"}, At: paris.Clock().Now()}
	data, _ := json.Marshal(rec)
	store.writeUnseen(sites, siteKey(id, "berlin"), data)
	testkit.Eventually(t, within, "the audit corrects the view", func() error {
		r, _ := paris.Get(context.Background(), id)
		if v := r.PerSite["berlin"]; len(v.Pending) != 0 || v.LocalID != "9" {
			return fmt.Errorf("berlin: %+v", v)
		}
		// The audit changes the view before it counts its repair.
		if paris.AuditRepairs() == 0 {
			return errors.New("the view is corrected, the repair not counted yet")
		}
		return nil
	})
	if paris.AuditRepairs() != 1 {
		t.Fatalf("audit repairs = %d, want 1", paris.AuditRepairs())
	}
}
