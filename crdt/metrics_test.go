package crdt

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestScrapeCountsGroupsAndListsThoseInTrouble: site a is in three
// groups, each with one write and asleep. A scrape counts them all,
// gives per-group series only for the groups in trouble (heads that
// differed from a member's, a repair due), reads nothing from the
// datastore for a group asleep, and lists no more than its bound.
func TestScrapeCountsGroupsAndListsThoseInTrouble(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.tune = func(c *Config) { c.IdleAfter = time.Hour }
	a := n.start("a")
	ctx := context.Background()
	group := func(sites ...string) *Group {
		t.Helper()
		g, err := a.m.existing(sites)
		if err != nil || g == nil {
			t.Fatalf("group %v: %v", sites, err)
		}
		return g
	}
	for i, sites := range [][]string{{"a", "b"}, {"a", "c"}, {"a", "b", "c"}} {
		if err := a.m.Put(ctx, sites, fmt.Sprintf("/k/%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
		if g := group(sites...); !g.sleep(ctx, time.Now()) {
			t.Fatalf("group {%s} did not go to sleep", g.name)
		}
	}
	ac, abc := group("a", "c"), group("a", "b", "c")
	a.m.exchanges.set(ac, n.ids["c"], false)

	scrape := func(reg *prometheus.Registry) (gauges map[string]float64, listed map[string][]string, reads int64) {
		t.Helper()
		before := a.disk.queries.Load() + a.disk.has.Load()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		reads = a.disk.queries.Load() + a.disk.has.Load() - before
		gauges, listed = map[string]float64{}, map[string][]string{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				if m.GetGauge() == nil {
					continue
				}
				labels := labelValues(m)
				if len(labels) == 0 {
					gauges[f.GetName()] = m.GetGauge().GetValue()
					continue
				}
				listed[f.GetName()] = append(listed[f.GetName()], fmt.Sprintf("%v=%g", labels, m.GetGauge().GetValue()))
			}
		}
		return gauges, listed, reads
	}
	expect := func(gauges map[string]float64, want map[string]float64) {
		t.Helper()
		for name, v := range want {
			if gauges[name] != v {
				t.Errorf("%s = %g, want %g", name, gauges[name], v)
			}
		}
	}
	expectListed := func(listed map[string][]string, name string, want ...string) {
		t.Helper()
		if fmt.Sprint(listed[name]) != fmt.Sprint(want) {
			t.Errorf("%s: %v, want %v", name, listed[name], want)
		}
	}

	gauges, listed, reads := scrape(a.reg)
	if reads != 0 {
		t.Errorf("a scrape of groups asleep read the datastore %d times", reads)
	}
	expect(gauges, map[string]float64{"cheops_crdt_groups": 3, "cheops_crdt_groups_diverged": 1,
		"cheops_crdt_groups_dirty": 0, "cheops_crdt_groups_unmerged": 0, "cheops_crdt_queued_jobs": 0})
	expectListed(listed, "cheops_crdt_group_heads", fmt.Sprintf("[%s]=1", ac.name))
	expectListed(listed, "cheops_crdt_group_digest_match", fmt.Sprintf("[%s c]=0", ac.name))

	// A repair due: the group's merged marks forgotten, as after an
	// unclean stop. Its heads are read once, then kept.
	abc.mu.Lock()
	err := abc.forgetMerged(ctx)
	abc.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	gauges, listed, _ = scrape(a.reg)
	expect(gauges, map[string]float64{"cheops_crdt_groups": 3, "cheops_crdt_groups_diverged": 1, "cheops_crdt_groups_dirty": 1})
	// In the order of their names: "a,b,c" before "a,c".
	expectListed(listed, "cheops_crdt_group_dirty", fmt.Sprintf("[%s]=1", abc.name), fmt.Sprintf("[%s]=0", ac.name))
	if _, _, reads := scrape(a.reg); reads != 0 {
		t.Errorf("a second scrape read the datastore %d times", reads)
	}

	// The bound on groups listed: the first by name.
	bounded := prometheus.NewRegistry()
	bounded.MustRegister(groupCollector{m: a.m, max: 1})
	gauges, listed, _ = scrape(bounded)
	expect(gauges, map[string]float64{"cheops_crdt_groups_diverged": 1, "cheops_crdt_groups_dirty": 1})
	expectListed(listed, "cheops_crdt_group_heads", fmt.Sprintf("[%s]=1", abc.name))
}

// labelValues returns a metric's label values, in order.
func labelValues(m *dto.Metric) []string {
	var v []string
	for _, l := range m.GetLabel() {
		v = append(v, l.GetValue())
	}
	return v
}

// TestHeadsReadThatFailsAreNotKept: a sleeping group's digest read from
// the datastore is kept for the next rounds and scrapes only if the read
// succeeded; one cut short (a failing store, a scrape's deadline) would
// otherwise stand for the group's heads until it next woke.
func TestHeadsReadThatFailsAreNotKept(t *testing.T) {
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) { c.IdleAfter = time.Hour }
	a := n.start("a")
	ctx := context.Background()
	if err := a.m.Put(ctx, []string{"a", "b"}, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	g, err := a.m.existing([]string{"a", "b"})
	if err != nil || g == nil || !g.sleep(ctx, time.Now()) {
		t.Fatalf("group {a,b} not asleep: %v", err)
	}
	if heads, ok := g.sleepingHeads(); !ok || len(heads) != 1 {
		t.Fatalf("asleep with heads %v (kept: %v), want one kept", heads, ok)
	}
	g.lastDigest.Store(nil) // as after a restart: read from the store when needed
	a.disk.crash()
	if d := g.digest(ctx); len(d.cids) != 0 {
		t.Fatalf("heads read from a failing store: %v", d.cids)
	}
	if heads, ok := g.sleepingHeads(); ok {
		t.Errorf("a failed read was kept as the group's heads: %v", heads)
	}
}
