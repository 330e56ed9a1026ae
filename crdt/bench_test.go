package crdt

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// Benchmarks on loopback, real hosts and pebble stores, as the tests.
// Run them all with
//
//	go test -run='^$' -bench=. -benchtime=2000x ./crdt
//
// In BenchmarkConvergeAfterHeal one op is one write made during the
// partition: -benchtime=10000x measures a heal after 10,000 writes.

// quantile returns the q-quantile of durations, in milliseconds.
func quantile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[int(q*float64(len(s)-1))]) / float64(time.Millisecond)
}

// BenchmarkPutVisibleAtAllMembers measures one put at a until b and c
// have applied it (3-site group, loopback): p50 and p99.
func BenchmarkPutVisibleAtAllMembers(b *testing.B) {
	n := newNet(b, "a", "b", "c")
	n.startAll("a", "b", "c")
	sites := []string{"a", "b", "c"}
	ctx := context.Background()
	// Let the group form first.
	if err := n.sites["a"].m.Put(ctx, sites, "/warm", []byte("v")); err != nil {
		b.Fatal(err)
	}
	for _, s := range []string{"b", "c"} {
		eventually(b, 10*time.Second, s+" joined", func() error { return hasValue(n.sites[s], sites, "/warm", "v") })
	}
	seen := make(chan string, 1024)
	for _, s := range []string{"b", "c"} {
		stop := n.sites[s].m.Watch(func(_ []string, key string, _ []byte, _ bool) { seen <- key })
		defer stop()
	}
	var lat []time.Duration
	inlineBefore := counterValue(n.sites["b"].m.metrics.inlineBlocksReceived)
	for i := 0; b.Loop(); i++ {
		key := fmt.Sprintf("/bench/%d", i)
		start := time.Now()
		if err := n.sites["a"].m.Put(ctx, sites, key, []byte("v")); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < 2; {
			select {
			case k := <-seen:
				if k == key {
					got++
				}
			case <-time.After(10 * time.Second):
				b.Fatalf("%s not visible everywhere", key)
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.ReportMetric(quantile(lat, 0.5), "p50-ms")
	b.ReportMetric(quantile(lat, 0.99), "p99-ms")
	b.ReportMetric((counterValue(n.sites["b"].m.metrics.inlineBlocksReceived)-inlineBefore)/float64(len(lat)), "inlined/op")
}

// BenchmarkFirstWriteInNewGroup measures the first put into a group no
// site had joined, from the put at a until every other member applied it
// (joining included): 8 sites, each iteration a new group of a and one to
// three others, so up to 63 iterations. p50 and p99.
func BenchmarkFirstWriteInNewGroup(b *testing.B) {
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	n := newNet(b, names...)
	n.startAll(names...)
	var groups [][]string
	for mask := range 1 << (len(names) - 1) {
		sites := []string{"a"}
		for i, s := range names[1:] {
			if mask&(1<<i) != 0 {
				sites = append(sites, s)
			}
		}
		if len(sites) >= 2 && len(sites) <= 4 {
			groups = append(groups, sites)
		}
	}
	seen := make(chan string, 1024)
	for _, s := range names[1:] {
		stop := n.sites[s].m.Watch(func(sites []string, key string, _ []byte, _ bool) { seen <- key })
		defer stop()
	}
	ctx := context.Background()
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		if i == len(groups) {
			b.Fatalf("only %d new groups: run with -benchtime %dx at most", len(groups), len(groups))
		}
		key := fmt.Sprintf("/first/%d", i)
		start := time.Now()
		if err := n.sites["a"].m.Put(ctx, groups[i], key, []byte("v")); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < len(groups[i])-1; {
			select {
			case k := <-seen:
				if k == key {
					got++
				}
			case <-time.After(10 * time.Second):
				b.Fatalf("%s not visible at every member of %v", key, groups[i])
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.ReportMetric(quantile(lat, 0.5), "p50-ms")
	b.ReportMetric(quantile(lat, 0.99), "p99-ms")
}

// BenchmarkPutBatch measures writes per second on one site of a 3-site
// group, in batches of 1 (Put) and 100 (PutBatch) catalog-sized values,
// while the two other members apply them.
func BenchmarkPutBatch(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			n := newNet(b, "a", "b", "c")
			n.startAll("a", "b", "c")
			ctx := context.Background()
			abc := []string{"a", "b", "c"}
			keys, vals := make([]string, batch), make([][]byte, batch)
			start := time.Now()
			writes := 0
			for i := 0; b.Loop(); i++ {
				for j := range batch {
					keys[j] = fmt.Sprintf("/bench/%d/%d", i, j)
					vals[j] = []byte(`{"site":"a","status":"ok","local_id":"12345","hlc":"1763880000000000000.0"}`)
				}
				var err error
				if batch == 1 {
					err = n.sites["a"].m.Put(ctx, abc, keys[0], vals[0])
				} else {
					err = n.sites["a"].m.PutBatch(ctx, abc, keys, vals)
				}
				if err != nil {
					b.Fatal(err)
				}
				writes += batch
			}
			b.ReportMetric(float64(writes)/time.Since(start).Seconds(), "writes/s")
		})
	}
}

// BenchmarkConvergeAfterHeal partitions {a,c} from b, makes b.N writes
// during the partition (half on each side, in batches of 100, or one put
// each), heals, and measures the time until every site holds every write
// (converge-ms), and what the catch-up cost: block bytes each site
// received, blocks received that the site already held.
func BenchmarkConvergeAfterHeal(b *testing.B) {
	for _, batch := range []int{100, 1} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { convergeAfterHeal(b, batch) })
	}
}

func convergeAfterHeal(b *testing.B, batch int) {
	n := newNet(b, "a", "b", "c")
	n.startAll("a", "b", "c")
	ctx := context.Background()
	abc := []string{"a", "b", "c"}
	// History shared before the partition, that nobody should fetch again.
	for i := range 10 {
		keys, vals := make([]string, 100), make([][]byte, 100)
		for j := range keys {
			keys[j], vals[j] = fmt.Sprintf("/old/%d/%d", i, j), []byte("old")
		}
		if err := n.sites["a"].m.PutBatch(ctx, abc, keys, vals); err != nil {
			b.Fatal(err)
		}
	}
	for _, s := range abc {
		eventually(b, 20*time.Second, s+" has the history", func() error { return hasValue(n.sites[s], abc, "/old/9/99", "old") })
	}
	n.partition([]string{"a", "c"}, []string{"b"})
	perSide := max(b.N/2, 1)
	var wg sync.WaitGroup
	for _, side := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perSide; i += batch {
				size := min(batch, perSide-i)
				keys, vals := make([]string, size), make([][]byte, size)
				for j := range size {
					keys[j] = fmt.Sprintf("/w/%s/%d", side, i+j)
					vals[j] = []byte(side)
				}
				if err := n.sites[side].m.PutBatch(ctx, abc, keys, vals); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	eventually(b, time.Minute, "c has a's writes", func() error {
		return hasValue(n.sites["c"], abc, fmt.Sprintf("/w/a/%d", perSide-1), "a")
	})
	before := map[string][2]float64{}
	for _, s := range abc {
		m := n.sites[s].m.metrics
		before[s] = [2]float64{vecTotal(m.blockBytesReceived), counterValue(m.duplicateBlocks)}
	}

	b.ResetTimer()
	healed := time.Now()
	n.heal([]string{"a", "c"}, []string{"b"})
	// go-ds-crdt applies a branch from its head down: the last write is
	// visible before the first. Converged: same heads everywhere, nothing
	// queued, and every write there.
	for !converged(n, abc, 2*perSide) {
		if time.Since(healed) > 2*time.Minute {
			b.Fatal("no convergence within two minutes")
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(healed)
	b.StopTimer()
	b.ReportMetric(float64(took)/float64(time.Millisecond), "converge-ms")
	for _, s := range abc {
		m := n.sites[s].m.metrics
		b.ReportMetric((vecTotal(m.blockBytesReceived)-before[s][0])/1024, "KiB-fetched-"+s)
		b.ReportMetric(counterValue(m.duplicateBlocks)-before[s][1], "dup-blocks-"+s)
	}
}

// BenchmarkBytesPerSite writes on a in group {a,b,c} while d, connected
// to all three, is in no group: it reports the bytes a sends to each
// member per write (pubsub, block and heads protocols together), the
// bytes b relays to c per write (gossip mesh), and every byte any site
// sent to d while the group worked (the target is 0).
func BenchmarkBytesPerSite(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			n := newNet(b, "a", "b", "c", "d")
			n.startAll("a", "b", "c", "d")
			ctx := context.Background()
			abc := []string{"a", "b", "c"}
			if err := n.sites["a"].m.Put(ctx, abc, "/warm", []byte("v")); err != nil {
				b.Fatal(err)
			}
			for _, s := range []string{"b", "c"} {
				eventually(b, 10*time.Second, s+" joined", func() error { return hasValue(n.sites[s], abc, "/warm", "v") })
			}
			total := func(from, to string) int64 {
				var t int64
				for _, v := range n.sites[from].bw.sent(n.ids[to]) {
					t += v
				}
				return t
			}
			type pair struct{ from, to string }
			pairs := []pair{{"a", "b"}, {"a", "c"}, {"b", "c"}, {"a", "d"}, {"b", "d"}, {"c", "d"}}
			before := map[pair]int64{}
			for _, p := range pairs {
				before[p] = total(p.from, p.to)
			}
			keys, vals := make([]string, batch), make([][]byte, batch)
			writes := 0
			var last string
			for i := 0; b.Loop(); i++ {
				for j := range batch {
					keys[j] = fmt.Sprintf("/bench/%d/%d", i, j)
					vals[j] = []byte(`{"site":"a","status":"ok","local_id":"12345","hlc":"1763880000000000000.0"}`)
				}
				last = keys[batch-1]
				if err := n.sites["a"].m.PutBatch(ctx, abc, keys, vals); err != nil {
					b.Fatal(err)
				}
				writes += batch
			}
			b.StopTimer()
			for _, s := range []string{"b", "c"} {
				eventually(b, time.Minute, s+" has every write", func() error { return hasValue(n.sites[s], abc, last, string(vals[batch-1])) })
			}
			per := func(p pair) float64 { return float64(total(p.from, p.to)-before[p]) / float64(writes) }
			b.ReportMetric(per(pair{"a", "b"}), "B/write-a-to-b")
			b.ReportMetric(per(pair{"a", "c"}), "B/write-a-to-c")
			b.ReportMetric(per(pair{"b", "c"}), "B/write-b-to-c")
			var toD int64
			for _, p := range pairs[3:] {
				toD += total(p.from, p.to) - before[p]
			}
			b.ReportMetric(float64(toD), "B-to-non-member")
		})
	}
}

// converged reports whether every site of the group holds the same heads,
// has no queued work and holds want keys under /w/.
func converged(n *testNet, sites []string, want int) bool {
	ctx := context.Background()
	name, _, _ := groupName(sites)
	var heads string
	for i, s := range sites {
		st := n.sites[s].m.group(name).stats(ctx)
		hs := fmt.Sprint(st.heads)
		if st.queued > 0 || (i > 0 && hs != heads) {
			return false
		}
		heads = hs
	}
	// Cheap first: the first write of each side is applied last.
	for _, s := range sites {
		for _, side := range []string{"a", "b"} {
			if _, ok, _ := n.sites[s].m.Get(ctx, sites, "/w/"+side+"/0"); !ok {
				return false
			}
		}
	}
	for _, s := range sites {
		count := 0
		_ = n.sites[s].m.Scan(ctx, "/w/", func([]string, string, []byte) error { count++; return nil })
		if count != want {
			return false
		}
	}
	return true
}

// BenchmarkIdleGroupCost measures what a group costs a site in memory
// and goroutines, asleep and awake, apart from its data: site a joins
// every group of 2 to 5 of 10 sites that names it (255 groups), which
// sleep from the start; then every one is woken and held awake.
func BenchmarkIdleGroupCost(b *testing.B) {
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	for b.Loop() {
		n := newNet(b, names...)
		// Every group is held awake at once below: no slot bound.
		n.tune = func(c *Config) { c.MaxAwake = 1 << 10 }
		a := n.start("a")
		ctx := context.Background()
		groups := siteSets(names, func(sites []string) bool {
			return len(sites) >= 2 && len(sites) <= 5 && sites[0] == "a"
		})
		heapNow := func() uint64 {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return ms.HeapAlloc
		}
		base, baseG := heapNow(), runtime.NumGoroutine()
		for _, sites := range groups {
			if _, err := a.m.join(ctx, sites); err != nil {
				b.Fatal(err)
			}
		}
		asleepHeap, asleepG := heapNow(), runtime.NumGoroutine()
		var dones []func()
		for _, g := range a.m.Groups() {
			_, done, _, err := g.use(ctx)
			if err != nil {
				b.Fatal(err)
			}
			dones = append(dones, done)
		}
		awakeHeap, awakeG := heapNow(), runtime.NumGoroutine()
		for _, done := range dones {
			done()
		}
		k := float64(len(groups))
		b.ReportMetric((float64(asleepHeap)-float64(base))/k, "B/group-asleep")
		b.ReportMetric((float64(awakeHeap)-float64(base))/k, "B/group-awake")
		b.ReportMetric(float64(asleepG-baseG)/k, "goroutines/group-asleep")
		b.ReportMetric(float64(awakeG-baseG)/k, "goroutines/group-awake")
		n.stop("a", true)
	}
}

// BenchmarkScrape measures one Prometheus scrape of a site in many
// groups, each asleep with one write in it: site a of 16 joins every
// group of 2 to 4 of them that names it (575 groups). It reports the
// series the scrape returned and the datastore reads it made.
func BenchmarkScrape(b *testing.B) {
	names := make([]string, 16)
	for i := range names {
		names[i] = string(rune('a' + i))
	}
	n := newNet(b, names...)
	n.tune = func(c *Config) { c.IdleAfter = time.Hour }
	a := n.start("a")
	ctx := context.Background()
	groups := siteSets(names, func(sites []string) bool {
		return len(sites) >= 2 && len(sites) <= 4 && sites[0] == "a"
	})
	for i, sites := range groups {
		if err := a.m.Put(ctx, sites, fmt.Sprintf("/k/%d", i), []byte("v")); err != nil {
			b.Fatal(err)
		}
	}
	for _, g := range a.m.Groups() {
		if !g.sleep(ctx, time.Now()) {
			b.Fatalf("group {%s} did not go to sleep", g.name)
		}
	}
	var series int
	queries0, has0 := a.disk.queries.Load(), a.disk.has.Load()
	for b.Loop() {
		families, err := a.reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		series = 0
		for _, f := range families {
			series += len(f.GetMetric())
		}
	}
	b.ReportMetric(float64(series), "series")
	b.ReportMetric(float64(a.disk.queries.Load()-queries0)/float64(b.N), "queries/scrape")
	b.ReportMetric(float64(a.disk.has.Load()-has0)/float64(b.N), "has/scrape")
}
