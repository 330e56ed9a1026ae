package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// workload writes every resource: two catalog-sized entries as one batch
// into its scope's group (space fullSpace: into one group of all sites),
// by the first site of its scope. Every site writes its resources at
// once, one after the other, until opt.WriteBudget is spent; then the
// workload waits up to opt.ConvergeWithin until every site holds every
// entry it must. While it waits, it logs on log every 5 s how many
// entries the sites' watchers have not seen yet, and the scans that
// found entries missing.
func (ss *scaleSites) workload(ctx context.Context, log *slog.Logger, scopes [][]string, space int, opt ScaleOptions) Workload {
	var w Workload
	bySite := map[string][]int{}
	for i, sc := range scopes {
		bySite[sc[0]] = append(bySite[sc[0]], i)
	}
	want := make([]atomic.Int64, len(ss.sites))
	index := map[string]int{}
	base := make([]int64, len(ss.sites))
	for i, s := range ss.sites {
		index[s.name] = i
		base[i] = s.held[space].Load()
	}
	before, cpu0 := ss.traffic(), SelfCPU()
	wctx, cancel := context.WithTimeout(ctx, opt.WriteBudget)
	defer cancel()
	var written atomic.Int64
	w.done = make([]bool, len(scopes))
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	var wg sync.WaitGroup
	for _, s := range ss.sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, i := range bySite[s.name] {
				if wctx.Err() != nil {
					return
				}
				group := scopes[i]
				if space == fullSpace {
					group = ss.names
				}
				p := entryPrefixes[space]
				keys := []string{fmt.Sprintf("%s%06d/meta", p, i), fmt.Sprintf("%s%06d/op/0", p, i)}
				if err := s.m.PutBatch(wctx, group, keys, [][]byte{entry, entry}); err != nil {
					if wctx.Err() == nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("%s writes resource %d: %w", s.name, i, err)
						}
						mu.Unlock()
					}
					return
				}
				written.Add(1)
				w.done[i] = true // each index is written by one site only
				for _, m := range group {
					want[index[m]].Add(int64(len(keys)))
				}
			}
		}()
	}
	wg.Wait()
	w.WriteTime = time.Since(start)
	w.Written = int(written.Load())
	if w.WriteTime > 0 {
		w.WritesPerSecond = float64(2*w.Written) / w.WriteTime.Seconds()
	}
	if firstErr != nil {
		w.Error = firstErr.Error()
		return w
	}
	if err := ctx.Err(); err != nil {
		w.Error = err.Error()
		return w
	}
	end := time.Now()
	// The CPU is counted until the watchers' counts say every site holds
	// its entries, not through the scan that confirms it: the scan wakes
	// every group at every site (a replica opened and closed at each
	// member of each resource, ~0.1 ms each), the benchmark's work, not
	// the catalog's.
	var cpu1 time.Duration
	// The watchers' counts say when to look; a scan of every site's
	// groups confirms it (a change delivered twice would count twice).
	var logged time.Time
	diagnosed := false
	var unseenLast int64 // the watchers' count at the last check
	err := waitFor(ctx, opt.ConvergeWithin, "every site holds every entry of its groups", func() error {
		var unseen int64
		defer func() { unseenLast = unseen }()
		var example error
		for i, s := range ss.sites {
			if got := s.held[space].Load() - base[i]; got < want[i].Load() {
				unseen += want[i].Load() - got
				if example == nil {
					example = fmt.Errorf("%s has seen %d of %d entries", s.name, got, want[i].Load())
				}
			}
		}
		if example != nil {
			if opt.diagnoseAfter > 0 && !diagnosed && time.Since(end) > opt.diagnoseAfter {
				diagnosed = true
				log.Info("scale: entries still missing", "after_last_write", time.Since(end).Round(time.Millisecond),
					"missing", ss.describe(ctx, ss.missing(ctx, scopes, w.done, space), 6))
			}
			if time.Since(logged) >= 5*time.Second {
				logged = time.Now()
				peers, conns, fewest, most := ss.connections()
				log.Info("scale: waiting for convergence", "after_last_write", time.Since(end).Round(time.Millisecond), "entries_unseen", unseen, "e.g.", example,
					"connected_pairs", peers, "connections", conns, "fewest_peers", fewest, "most_connections", most)
			}
			return example
		}
		at, cpuAt := time.Now(), SelfCPU()
		if opt.converged != nil {
			opt.converged()
			opt.converged = nil
		}
		for i, s := range ss.sites {
			if got := countPrefix(ctx, s, entryPrefixes[space]); int64(got) < want[i].Load() {
				log.Info("scale: a scan found entries missing", "after_last_write", time.Since(end).Round(time.Millisecond), "scan_took", time.Since(at).Round(time.Millisecond),
					"site", s.name, "holds", got, "of", want[i].Load())
				return fmt.Errorf("%s holds %d of %d entries", s.name, got, want[i].Load())
			}
		}
		w.Converged, cpu1 = at.Sub(end), cpuAt
		return nil
	})
	if err != nil {
		w.Error = err.Error()
		// Which entries are missing, for BenchmarkScaleWrites's
		// diagnosis: a scan of every site, worth it for a tail of a few
		// entries only. Full replication of 100 sites left over a million
		// unseen, and the scans, competing with the merges still queued,
		// held the full profile for more than five minutes.
		if unseenLast <= maxListedMissing && (space == scopedSpace || opt.listMissing) {
			mctx, cancel := context.WithTimeout(ctx, time.Minute)
			listing := time.Now()
			if me := ss.missing(mctx, scopes, w.done, space); mctx.Err() == nil {
				w.missing = me
			}
			cancel()
			log.Info("scale: missing entries listed", "took", time.Since(listing).Round(time.Millisecond))
		}
		return w
	}
	w.BytesSent = ss.traffic().minus(before).all
	if w.Written > 0 {
		w.CPUPerWrite = (cpu1 - cpu0) / time.Duration(2*w.Written)
	}
	return w
}

// maxListedMissing is the most entries still unseen (by the watchers'
// counts) for which a size that did not converge lists the missing
// entries one by one.
const maxListedMissing = 10000

// countPrefix counts a site's keys under prefix, in every group.
func countPrefix(ctx context.Context, s *scaleSite, prefix string) int {
	n := 0
	_ = s.m.Scan(ctx, prefix, func([]string, string, []byte) error { n++; return nil })
	return n
}

// idleGroups measures what an idle group costs, as a slope: a first
// batch of n new groups (site sets of 2–3, one write each, seen at every
// member) is created and left idle, then a second batch of n more, on
// pairs of sites the first batch already shares (see below). Each
// batch is settled (every replica asleep, the links closed) and watched
// for a window, with the live heap and goroutines read idleReadings times
// evenly over it and the bytes sent counted over it. The first
// batch absorbs what the process grows once, whatever the number of
// groups (the goroutine descriptors the runtime keeps after the burst of
// replicas that the writes woke, pebble's WAL buffers, maps growing);
// the figures of the second batch's groups are what the second batch
// added: heap per replica (the smallest reading's, the spread of the
// readings' differences kept), goroutines per group, and the bytes of the
// crdt protocols whose messages name a group per group and minute. The
// first batch's growth since before any group is kept beside them.
// Anti-entropy's bytes during the second window are divided among the
// pairs of sites that share a group of either batch. It runs on sites
// that have no other group yet, so all the crdt traffic is theirs (what
// the crdt protocols sent in the 2 s before they existed, none when
// nothing else is there, is taken off pro rata). The groups' site sets
// are added to used.
func (ss *scaleSites) idleGroups(ctx context.Context, rng *rand.Rand, used map[string]bool, n int, window time.Duration) *IdleFigures {
	idle := &IdleFigures{Window: window}
	// The second batch's groups are drawn among the pairs of sites the
	// first already shares, so that its slope is the groups' own cost:
	// a group that makes two sites share something for the first time
	// also adds what a site keeps per peer it shares groups with
	// (anti-entropy's cadence and exchanges, the last-sync gauge, the
	// resource manager's scopes for its streams), a cost of the peers, not
	// of the groups. At 30 sites the first batch covers every pair; at
	// 100 it covers a part of the 4,950, and the second batch's new pairs
	// were charged to its groups. Sets are drawn at random otherwise when
	// too few such sets are left (SecondNewPairs counts those pairs).
	first := newGroups(rng, ss.names, used, n, nil)
	for _, g := range first {
		used[groupKey(g)] = true
	}
	covered := pairsOf(first)
	second := newGroups(rng, ss.names, used, n, covered.hold)
	for _, g := range second {
		used[groupKey(g)] = true
	}
	if len(second) < n {
		second = append(second, newGroups(rng, ss.names, used, n-len(second), nil)...)
	}
	idle.SecondNewPairs = len(pairsOf(second).minus(covered))
	groups := slices.Concat(first, second)
	if len(groups) < 2*n {
		idle.Error = fmt.Sprintf("only %d unused site sets of 2–4 among %d sites, %d wanted (two batches of %d)", len(groups), len(ss.names), 2*n, n)
		if len(first) == 0 || len(second) == 0 {
			return idle
		}
	}
	const before = 2 * time.Second
	t0 := ss.traffic()
	if !sleepCtx(ctx, before) {
		return idle
	}
	base := ss.traffic().minus(t0)
	heap0, gor0 := liveHeapAndGoroutines()
	own0, err := groupGoroutines()
	if err != nil {
		idle.Error = err.Error()
		return idle
	}
	half := len(first)
	firstBatch, err1 := ss.idleBatch(ctx, groups[:half], 0, window, base, before)
	if firstBatch == nil {
		return idle
	}
	idle.First = firstBatch.figures(heap0, gor0, own0, nil, window)
	if ss.afterIdleBatch != nil {
		ss.afterIdleBatch(0)
	}
	secondBatch, err2 := ss.idleBatch(ctx, groups[half:], half, window, base, before)
	if secondBatch == nil {
		return idle
	}
	if ss.afterIdleBatch != nil {
		ss.afterIdleBatch(1)
	}
	if err := errors.Join(err1, err2); err != nil {
		idle.Error = strings.TrimPrefix(idle.Error+"; "+strings.ReplaceAll(err.Error(), "\n", "; "), "; ")
	}
	f := secondBatch.figures(0, 0, 0, firstBatch, window)
	idle.Groups, idle.Members = f.Groups, f.Members
	idle.HeapPerGroupMember, idle.HeapPerGroupMemberMin, idle.HeapPerGroupMemberMax = f.HeapPerGroupMember, f.HeapPerGroupMemberMin, f.HeapPerGroupMemberMax
	idle.GoroutinesPerGroup, idle.ProcessGoroutinesPerGroup, idle.GroupBytesPerGroupMinute = f.GoroutinesPerGroup, f.ProcessGoroutinesPerGroup, f.GroupBytesPerGroupMinute
	idle.Pairs = len(pairsOf(groups))
	if idle.Pairs > 0 {
		idle.DigestBytesPerPairMinute = float64(secondBatch.sent.digests) * float64(time.Minute) / float64(window) / float64(idle.Pairs)
	}
	idle.heapGrowth = int64(secondBatch.heap[len(secondBatch.heap)-1]) - int64(heap0)
	return idle
}

// idleReadings is how many times the heap is read over an idle window.
// Between two readings of the same idle sites the live heap moves by up
// to ±0.4 MiB at 20 sites (streams and buffers of membership's probes in
// flight at the collection), and by up to 8.6 MiB at 100 sites over a
// floor it keeps returning to (425 MiB with no group, read every 5 s
// for 100 s): the smallest reading leaves most of that out, more
// readings find the floor more often, and the readings' spread shows
// it.
const idleReadings = 9

// idleBatch is one batch of idle groups once settled: the live heap and
// goroutines read idleReadings times over its window, and what the crdt
// protocols sent during the window.
type idleBatch struct {
	groups, members int
	heap            []uint64
	// goroutines is the fewest goroutines of the readings, the process's;
	// groupGoroutines the fewest running a group's code (groupGoroutines).
	goroutines, groupGoroutines int
	sent                        traffic
}

// idleBatch writes one key into each of groups (keys numbered from
// offset), waits until every replica sleeps and the links are closed,
// then reads heap and goroutines idleReadings times over a window,
// counting the bytes sent during it (less base, what was sent over the
// span before before any group existed, pro rata). It returns the batch, with an error when a
// group's write was not seen or its replicas did not fall asleep (the
// figures are then taken anyway); nil when ctx ended.
func (ss *scaleSites) idleBatch(ctx context.Context, groups [][]string, offset int, window time.Duration, base traffic, before time.Duration) (*idleBatch, error) {
	var wg sync.WaitGroup
	var lost atomic.Int64
	sem := make(chan struct{}, 8)
	for i, g := range groups {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, ok := ss.probe(ctx, idleSpace, offset+i, g, 30*time.Second); !ok {
				lost.Add(1)
			}
		}()
	}
	wg.Wait()
	var errs []error
	if lost.Load() > 0 {
		errs = append(errs, fmt.Errorf("%d of %d groups' first write not seen by every member within 30 s", lost.Load(), len(groups)))
	}
	b := &idleBatch{groups: len(groups)}
	for _, g := range groups {
		b.members += len(g)
	}
	// Settle: every group asleep at every member (IdleAfter after its
	// last use) and the links idle.
	asleepBy := time.Now().Add(2*scaleIdleAfter + 30*time.Second)
	for ss.awake() > 0 {
		if time.Now().After(asleepBy) {
			errs = append(errs, fmt.Errorf("%d groups still awake %v after the writes", ss.awake(), 2*scaleIdleAfter+30*time.Second))
			break
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	if !sleepCtx(ctx, 11*time.Second) { // links close after 10 s idle
		return nil, ctx.Err()
	}
	t1 := ss.traffic()
	for i := range idleReadings {
		if i > 0 && !sleepCtx(ctx, window/(idleReadings-1)) {
			return nil, ctx.Err()
		}
		h, g := liveHeapAndGoroutines()
		b.heap = append(b.heap, h)
		if i == 0 || g < b.goroutines {
			b.goroutines = g
		}
		own, err := groupGoroutines()
		if err != nil {
			errs = append(errs, err)
		}
		if i == 0 || own < b.groupGoroutines {
			b.groupGoroutines = own
		}
	}
	b.sent = ss.traffic().minus(t1)
	b.sent.groups -= base.groups * int64(window) / int64(before)
	b.sent.digests -= base.digests * int64(window) / int64(before)
	return b, errors.Join(errs...)
}

// figures are the batch's per-group figures: what it added to prev, the
// batch before it, or with no batch before, to the heap and goroutines
// read before any group existed (heap0; gor0 the process's, own0 those
// running a group's code) and to no bytes. The heap
// figure is the growth of the smallest reading; its spread, the growth
// of each reading over the reading at the same point of prev's window.
func (b *idleBatch) figures(heap0 uint64, gor0, own0 int, prev *idleBatch, window time.Duration) *IdleBatchFigures {
	f := &IdleBatchFigures{Groups: b.groups, Members: b.members}
	perMember := func(to, from uint64) float64 { return (float64(to) - float64(from)) / float64(b.members) }
	if prev == nil {
		f.HeapPerGroupMember = perMember(slices.Min(b.heap), heap0)
		f.HeapPerGroupMemberMin, f.HeapPerGroupMemberMax = f.HeapPerGroupMember, perMember(slices.Max(b.heap), heap0)
	} else {
		f.HeapPerGroupMember = perMember(slices.Min(b.heap), slices.Min(prev.heap))
		var growth []float64
		for i, h := range b.heap {
			growth = append(growth, perMember(h, prev.heap[i]))
		}
		f.HeapPerGroupMemberMin, f.HeapPerGroupMemberMax = slices.Min(growth), slices.Max(growth)
	}
	sent, gor, own := b.sent.groups, b.goroutines-gor0, b.groupGoroutines-own0
	if prev != nil {
		sent, gor, own = b.sent.groups-prev.sent.groups, b.goroutines-prev.goroutines, b.groupGoroutines-prev.groupGoroutines
	}
	f.GoroutinesPerGroup = float64(own) / float64(b.groups)
	f.ProcessGoroutinesPerGroup = float64(gor) / float64(b.groups)
	f.GroupBytesPerGroupMinute = float64(sent) * float64(time.Minute) / float64(window) / float64(b.groups)
	return f
}

// sitePairs is a set of pairs of sites, each pair in name order.
type sitePairs map[[2]string]bool

// pairsOf is the pairs of sites that share at least one of groups.
func pairsOf(groups [][]string) sitePairs {
	pairs := sitePairs{}
	for _, g := range groups {
		for i, a := range g {
			for _, b := range g[i+1:] {
				pairs[[2]string{min(a, b), max(a, b)}] = true
			}
		}
	}
	return pairs
}

// hold reports whether every pair of g's sites is in ps.
func (ps sitePairs) hold(g []string) bool {
	for i, a := range g {
		for _, b := range g[i+1:] {
			if !ps[[2]string{min(a, b), max(a, b)}] {
				return false
			}
		}
	}
	return true
}

// minus is the pairs of ps not in other.
func (ps sitePairs) minus(other sitePairs) sitePairs {
	out := sitePairs{}
	for p := range ps {
		if !other[p] {
			out[p] = true
		}
	}
	return out
}

// SelfCPU is the CPU time this process has used, user and system.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// awake counts the open group replicas of every site.
func (ss *scaleSites) awake() int {
	n := 0
	for _, s := range ss.sites {
		n += s.m.Awake()
	}
	return n
}

// firstWrites times n first writes into brand-new groups (site sets no
// resource or earlier group used), one after the other: from the start
// of the Put at one member until every other member's watcher delivered
// the key. A write not seen within 5 s counts as 5 s.
func (ss *scaleSites) firstWrites(ctx context.Context, rng *rand.Rand, used map[string]bool, n int) *FirstWriteFigures {
	fw := &FirstWriteFigures{}
	groups := newGroups(rng, ss.names, used, n, nil)
	if len(groups) < n {
		fw.Error = fmt.Sprintf("only %d unused site sets of 2–4 among %d sites, %d wanted", len(groups), len(ss.names), n)
	}
	var lat []time.Duration
	for i, g := range groups {
		used[groupKey(g)] = true
		d, ok := ss.probe(ctx, probeSpace, i, g, 5*time.Second)
		if !ok {
			fw.TimedOut++
			d = 5 * time.Second
		}
		lat = append(lat, d)
	}
	fw.Samples = len(lat)
	fw.P50, fw.P99 = percentile(lat, 50), percentile(lat, 99)
	return fw
}

// probe writes one key of a space (probeSpace, idleSpace) into group at
// its first site and returns how long until every other member's watcher
// delivered it; false when that took longer than within.
func (ss *scaleSites) probe(ctx context.Context, space, i int, group []string, within time.Duration) (time.Duration, bool) {
	key := fmt.Sprintf("%s%06d", entryPrefixes[space], i)
	w := ss.expect(key, group)
	defer ss.unexpect(key)
	start := time.Now()
	if err := ss.site(group[0]).m.Put(ctx, group, key, entry); err != nil {
		return 0, false
	}
	select {
	case <-w.done:
		return w.last.Sub(start), true
	case <-time.After(within):
		return 0, false
	case <-ctx.Done():
		return 0, false
	}
}

// newGroups draws n site sets that are not in used and that within
// accepts (nil: any): random sets of 2 and 3 sites, then, when those run
// out (up to 40 sites), every unused set of 2, 3 and 4 in random order.
// The writer (first site) is any member. It returns fewer when it finds
// fewer.
func newGroups(rng *rand.Rand, names []string, used map[string]bool, n int, within func([]string) bool) [][]string {
	var out [][]string
	taken := map[string]bool{}
	take := func(g []string) {
		if key := groupKey(g); len(out) < n && !used[key] && !taken[key] && (within == nil || within(g)) {
			taken[key] = true
			out = append(out, g)
		}
	}
	for range 50 * n {
		if len(out) == n {
			return out
		}
		var g []string
		for _, p := range rng.Perm(len(names))[:min(2+rng.IntN(2), len(names))] {
			g = append(g, names[p])
		}
		take(g)
	}
	var all [][]string
	for k := 2; k <= min(4, len(names)) && len(names) <= 40; k++ {
		combinations(names, k, nil, func(c []string) { all = append(all, slices.Clone(c)) })
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	for _, g := range all {
		r := rng.IntN(len(g))
		take(append(slices.Clone(g[r:]), g[:r]...))
	}
	return out
}

// combinations calls fn with every k-subset of names, in order (fn
// must copy it to keep it).
func combinations(names []string, k int, prefix []string, fn func([]string)) {
	if len(prefix) == k {
		fn(prefix)
		return
	}
	for i := range names {
		combinations(names[i+1:], k, append(prefix, names[i]), fn)
	}
}

// liveHeapAndGoroutines returns the heap the last collection found live
// (runtime/metrics /gc/heap/live:bytes, which leaves out what was
// allocated since: HeapAlloc after a forced collection moved by ±100 MiB
// between idle windows of 20 sites) and the goroutines, the smallest of
// two collections each.
func liveHeapAndGoroutines() (uint64, int) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var heap uint64
	gor := 0
	for i := range 2 {
		runtime.GC()
		metrics.Read(sample)
		h, g := sample[0].Value.Uint64(), runtime.NumGoroutine()
		if i == 0 || h < heap {
			heap = h
		}
		if i == 0 || g < gor {
			gor = g
		}
	}
	return heap, gor
}

// sleepCtx waits d, or less when ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// missingEntries is what a workload that did not converge left out:
// which site lacks which resource's entries, and what the crdt package
// says of those resources' groups at each member.
type missingEntries struct {
	// bySite counts the entries each site lacks.
	bySite map[string]int
	// keys lists the missing (site, key) pairs, sorted.
	keys []missingKey
}

// missingKey is one entry a site lacks.
type missingKey struct {
	site, key string
	resource  int
	group     []string // the group the resource was written into
	writer    string   // the site that wrote it
}

// missing scans every site and lists the entries of written resources
// (done) it does not hold.
func (ss *scaleSites) missing(ctx context.Context, scopes [][]string, done []bool, space int) *missingEntries {
	me := &missingEntries{bySite: map[string]int{}}
	p := entryPrefixes[space]
	for _, s := range ss.sites {
		// Full replication's keys are all in the group of all sites: they
		// are asked of it. A scan visits every group of the site (~1,500
		// at 100 sites after the scoped writes, each woken), and it held
		// a full profile for minutes.
		var held func(key string) bool
		if space == fullSpace {
			held = func(key string) bool {
				_, found, _ := s.m.Get(ctx, ss.names, key)
				return found
			}
		} else {
			keys := map[string]bool{}
			_ = s.m.Scan(ctx, p, func(_ []string, key string, _ []byte) error { keys[key] = true; return nil })
			held = func(key string) bool { return keys[key] }
		}
		for i, sc := range scopes {
			group := sc
			if space == fullSpace {
				group = ss.names
			}
			if !done[i] || !slices.Contains(group, s.name) {
				continue
			}
			for _, k := range []string{fmt.Sprintf("%s%06d/meta", p, i), fmt.Sprintf("%s%06d/op/0", p, i)} {
				if !held(k) {
					me.bySite[s.name]++
					me.keys = append(me.keys, missingKey{site: s.name, key: k, resource: i, group: group, writer: sc[0]})
				}
			}
		}
	}
	return me
}

// still reports how many of the missing entries are still missing.
func (ss *scaleSites) still(ctx context.Context, me *missingEntries) int {
	n := 0
	for _, mk := range me.keys {
		if _, found, _ := ss.site(mk.site).m.Get(ctx, mk.group, mk.key); !found {
			n++
		}
	}
	return n
}

// describe tells, for up to max missing entries, the state of their
// group at every member (joined or not, heads, merged nodes, last
// exchange with the others), one line per member.
func (ss *scaleSites) describe(ctx context.Context, me *missingEntries, max int) string {
	var b strings.Builder
	sites := make([]string, 0, len(me.bySite))
	for s := range me.bySite {
		sites = append(sites, s)
	}
	slices.Sort(sites)
	fmt.Fprintf(&b, "%d entries missing:", len(me.keys))
	for _, s := range sites {
		fmt.Fprintf(&b, " %s %d", s, me.bySite[s])
	}
	b.WriteString("\n")
	seen, described := map[int]bool{}, map[string]bool{}
	for _, mk := range me.keys {
		if seen[mk.resource] || len(seen) >= max {
			continue
		}
		seen[mk.resource] = true
		name := groupKey(mk.group)
		fmt.Fprintf(&b, "resource %d, group {%s}, writer %s, missing at %s", mk.resource, name, mk.writer, mk.site)
		if described[name] {
			// One group of all sites (full replication) holds them all.
			b.WriteString(" (the group as above)\n")
			continue
		}
		described[name] = true
		b.WriteString(":\n")
		for _, member := range mk.group {
			s := ss.site(member)
			st, joined := s.m.StatusOf(ctx, mk.group)
			if !joined {
				fmt.Fprintf(&b, "  %s (id %s): not joined\n", member, s.node.Host().ID())
				continue
			}
			fmt.Fprintf(&b, "  %s (id %s): heads %v merged %d height %d queued %d fetching %d dirty %v asleep %v heard %v;",
				member, s.node.Host().ID(), st.Heads, st.Merged, st.Height, st.Queued, st.Fetching, st.Dirty, st.Asleep, st.LastHeard.Format(time.TimeOnly))
			for _, ms := range st.Members {
				match := "?"
				if ms.DigestMatch != nil {
					match = fmt.Sprint(*ms.DigestMatch)
				}
				fmt.Fprintf(&b, " %s connected %v exchanged %v match %s;", ms.Site, ms.Connected, ms.LastExchange.Format(time.TimeOnly), match)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// connections counts the (site, peer) pairs connected and the
// connections, and gives the fewest peers any site is connected to and
// the most connections any site has (libp2p's connection manager closes
// some past 192).
func (ss *scaleSites) connections() (peers, conns, fewest, most int) {
	fewest = len(ss.sites)
	for _, s := range ss.sites {
		nw := s.node.Host().Network()
		n, c := len(nw.Peers()), len(nw.Conns())
		peers += n
		conns += c
		fewest, most = min(fewest, n), max(most, c)
	}
	return peers, conns, fewest, most
}
