package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	rtrace "runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A tiny run on real in-process sites: every target line is printed with
// its verdict, and a target no run can meet (a heap of 1 byte per site)
// is listed by Missed.
func TestScaleSmall(t *testing.T) {
	env := Env{Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	opt := ScaleOptions{
		Cases:   []ScaleCase{{Sites: 5, Resources: 8, Probes: 2, IdleGroups: 3}},
		Process: &ScaleProcessCase{Agents: 3, Resources: 10}, // no binary: skipped
		Targets: DefaultScaleTargets(), FormWithin: time.Minute, WriteBudget: time.Minute, ConvergeWithin: time.Minute,
		IdleWindow: time.Second, Seed: 1,
	}
	opt.Targets.HeapPerSite = 1
	res, err := RunScale(context.Background(), env, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cases) != 1 {
		t.Fatalf("%d cases, want 1", len(res.Cases))
	}
	c := res.Cases[0]
	if c.Error != "" {
		t.Fatalf("case failed: %s", c.Error)
	}
	if c.Scoped.Written != 8 || c.HeapPerSite == 0 || c.DiskPerSite == 0 || c.Scoped.WritesPerSecond <= 0 || c.Scoped.BytesSent <= 0 ||
		c.Scoped.CPUPerWrite <= 0 || c.Took <= 0 {
		t.Fatalf("empty figures: %+v", c)
	}
	if c.Groups < 1 || c.Groups > 8 {
		t.Fatalf("%d groups for 8 resources", c.Groups)
	}
	if c.Full == nil || c.Full.Error != "" || c.Full.Written != 8 || c.Full.BytesSent <= 0 {
		t.Fatalf("full replication: %+v", c.Full)
	}
	if c.FirstWrite == nil || c.FirstWrite.Samples != 2 || c.FirstWrite.P99 <= 0 {
		t.Fatalf("first writes: %+v", c.FirstWrite)
	}
	if c.Idle == nil || c.Idle.Groups != 3 || c.Idle.Members < 6 || c.Idle.Pairs < 3 {
		t.Fatalf("idle groups: %+v", c.Idle)
	}
	if res.Process == nil || res.Process.Skipped == "" {
		t.Fatalf("process check without a binary: %+v", res.Process)
	}
	var b bytes.Buffer
	res.Table(&b)
	table := b.String()
	for _, target := range []string{"converged after the last write ≤ 5000 ms", "catalog writes/s ≥ 5000", "heap/site ≤ 0 MiB",
		"all resources written", "p99 ms ≤ 50", "heap B per group and member ≤ 2048", "goroutines per group ≤ 0.05",
		"group messages B per group-minute ≤ 0", "anti-entropy B per pair-minute", "cpu µs/write", "1 process, ", "skipped: no cheops binary"} {
		if !strings.Contains(table, target) {
			t.Errorf("table lacks %q:\n%s", target, table)
		}
	}
	// 4 verdicts for the size, 1 for first writes, 3 for idle groups.
	if n := strings.Count(table, ": met") + strings.Count(table, ": MISSED"); n != 8 {
		t.Errorf("%d verdicts, want 8:\n%s", n, table)
	}
	if !strings.Contains(table, ": MISSED") {
		t.Errorf("a heap of 1 byte per site is not marked MISSED:\n%s", table)
	}
	missed := strings.Join(res.Missed(), "\n")
	if !strings.Contains(missed, "5 sites × 8 resources: heap ") {
		t.Errorf("Missed lacks the impossible heap target: %q", missed)
	}
	if _, err := RunScale(context.Background(), Env{Agents: []string{"http://x"}, Log: env.Log}, opt); err == nil {
		t.Fatal("scale accepted --agents")
	}
}

// Verdicts from figures alone: each target beside its figure, a failed
// size missing every target with its error, the process check's failure
// missed and its skip not.
func TestScaleVerdicts(t *testing.T) {
	tg := DefaultScaleTargets()
	ok := ScaleFigures{ScaleCase: ScaleCase{Sites: 30, Resources: 1000, Probes: 10, IdleGroups: 20}, Groups: 700,
		Scoped:      Workload{Written: 1000, WritesPerSecond: 6000, WriteTime: time.Second, Converged: 800 * time.Millisecond, BytesSent: 1 << 20},
		Full:        &Workload{Written: 1000, WritesPerSecond: 3000, WriteTime: 2 * time.Second, Converged: 2 * time.Second, BytesSent: 8 << 20},
		HeapPerSite: 2 << 20,
		FirstWrite:  &FirstWriteFigures{Samples: 10, P50: 5 * time.Millisecond, P99: 80 * time.Millisecond},
		Idle: &IdleFigures{IdleBatchFigures: IdleBatchFigures{Groups: 20, Members: 50, HeapPerGroupMember: 900, HeapPerGroupMemberMin: 850, HeapPerGroupMemberMax: 1010,
			GoroutinesPerGroup: 4, GroupBytesPerGroupMinute: 0}, Window: time.Minute,
			First: &IdleBatchFigures{Groups: 20, Members: 48, HeapPerGroupMember: 6321, HeapPerGroupMemberMin: 6300, HeapPerGroupMemberMax: 6400, GoroutinesPerGroup: 0.5}}}
	// The verdict is the second batch's slope: the first batch's figure,
	// which holds the process's one-time growth, is printed without one.
	idleMissed := ok
	idleMissed.FirstWrite, idleMissed.Idle = nil, &IdleFigures{IdleBatchFigures: IdleBatchFigures{Groups: 20, Members: 50, HeapPerGroupMember: 2100, HeapPerGroupMemberMin: 2000,
		HeapPerGroupMemberMax: 2300}, Window: time.Minute, First: &IdleBatchFigures{Groups: 20, Members: 50, HeapPerGroupMember: 1000}}
	failed := ScaleFigures{ScaleCase: ScaleCase{Sites: 100, Resources: 100000}, Error: "bench: 100 sites see each other up: not within 2m0s"}
	// The full-replication comparison on a tenth of the resources: the
	// ratios are per resource written, as with all of them.
	fewer := ok
	fewer.FirstWrite, fewer.Idle = nil, nil
	fewer.FullResources = 100
	fewer.Full = &Workload{Written: 100, WriteTime: 200 * time.Millisecond, Converged: 200 * time.Millisecond, BytesSent: 8 << 20 / 10}
	// Ratios far below 0.01 keep two significant digits (100 sites: a
	// fully replicated resource cost ~500 times the bytes of a scoped one).
	dearer := fewer
	dearer.Full = &Workload{Written: 100, WriteTime: 200 * time.Millisecond, Converged: 200 * time.Millisecond, BytesSent: 55188210}
	for _, tc := range []struct {
		name    string
		res     ScaleResult
		lines   []string
		missed  []string
		nMissed int
	}{
		{"met and missed", ScaleResult{Cases: []ScaleFigures{ok}},
			[]string{"800 ≤ 5000: met", "6000 ≥ 5000: met", "2.0 ≤ 16.0: met", "1000 of 1000: met", "80.0 ≤ 50.0: MISSED",
				"2nd, slope", "900 ≤ 2048: met", "850–1010", "4.00 ≤ 0.05: MISSED", "0 ≤ 0: met", "0.12", "0.45",
				"1st, no verdict", "6321", "6300–6400", "0.50"},
			[]string{"p99 > 50 ms", "4.00 goroutines per idle group"}, 2},
		{"full replication on fewer resources", ScaleResult{Cases: []ScaleFigures{fewer}},
			[]string{"time/resource scoped:full", "0.13", "0.45"}, nil, 0},
		{"full replication far dearer", ScaleResult{Cases: []ScaleFigures{dearer}},
			[]string{"0.0019"}, nil, 0},
		{"idle slope missed", ScaleResult{Cases: []ScaleFigures{idleMissed}},
			[]string{"2100 ≤ 2048: MISSED", "2000–2300", "1st, no verdict"},
			[]string{"an idle group costs 2100 B of heap per member (a second batch's slope) > 2048 B"}, 1},
		{"failed size", ScaleResult{Cases: []ScaleFigures{ok, failed}},
			[]string{"failed: MISSED", "100 sites × 100000 resources failed: bench: 100 sites see each other up"},
			[]string{"100 sites × 100000 resources: failed, every target missed: bench: 100 sites"}, 3},
		{"process skipped", ScaleResult{Process: &ScaleProcessFigures{Skipped: "no cheops binary"}},
			[]string{"skipped: no cheops binary"}, nil, 0},
		{"process failed", ScaleResult{Process: &ScaleProcessFigures{ScaleProcessCase: ScaleProcessCase{Agents: 20, Resources: 10000}, Error: "catalogs after the heal: not within 3m"}},
			[]string{"converged within 3m0s after the heal: MISSED"}, []string{"process check (20 agents, 10000 resources): catalogs after the heal"}, 1},
		{"process converged", ScaleResult{Process: &ScaleProcessFigures{ScaleProcessCase: ScaleProcessCase{Agents: 20, Resources: 10000},
			Created: 10000, Catalog: 3 * time.Second, Applied: 5 * time.Second, Applications: "ok"}},
			[]string{"converged within 3m0s after the heal (the issue sets no time): met", "applications hold their scopes' items: met"}, nil, 0},
		{"process short of creates", ScaleResult{Process: &ScaleProcessFigures{ScaleProcessCase: ScaleProcessCase{Agents: 20, Resources: 10000, CreateBudget: time.Minute},
			Created: 3000, Catalog: 3 * time.Second, Applied: 5 * time.Second, Applications: "s03 holds 12 items, its scopes 11"}},
			[]string{"created 3000 of 10000 (budget 1m0s per half): MISSED", "applications hold their scopes' items: MISSED"},
			[]string{"only 3000 created", "s03 holds 12 items"}, 2},
	} {
		tc.res.Options.Targets, tc.res.Processes, tc.res.CPUs, tc.res.GOMAXPROCS = tg, 1, 2, 2
		var b bytes.Buffer
		tc.res.Table(&b)
		for _, l := range tc.lines {
			if !strings.Contains(b.String(), l) {
				t.Errorf("%s: table lacks %q:\n%s", tc.name, l, b.String())
			}
		}
		got := tc.res.Missed()
		if len(got) != tc.nMissed {
			t.Errorf("%s: missed %q, want %d", tc.name, got, tc.nMissed)
		}
		for _, m := range tc.missed {
			if !strings.Contains(strings.Join(got, "\n"), m) {
				t.Errorf("%s: missed %q lacks %q", tc.name, got, m)
			}
		}
	}
}

// BenchmarkScaleWrites runs the scale scenario's scoped write phase alone
// (20 in-process sites, 1,000 resources of two entries in scopes of 2–3
// sites, every site writing at once) for profiling:
//
//	go test -run '^$' -bench ScaleWrites -benchtime 1x -cpuprofile cpu.prof ./bench/
//
// The profile also covers the sites' start (a few seconds, mostly
// waiting); writes/s and CPU µs per catalog write are the phase's alone.
//
// CHEOPS_SCALE_SITES and CHEOPS_SCALE_RESOURCES change the sizes;
// CHEOPS_SCALE_FULL=1 writes every resource into one group of all sites
// (full replication) instead of its scope's; CHEOPS_SCALE_WRITE_BUDGET
// and CHEOPS_SCALE_CONVERGE_WITHIN (Go durations) replace the quick
// profile's 20 s for the writes and for convergence after them (the
// `--full` profile gives 1m and 45s). A run that does not converge logs
// the entries missing and their groups' state at every member; with
// CHEOPS_SCALE_LATE (a Go duration) it then waits that long more and
// logs when the missing entries arrive, if they do;
// CHEOPS_SCALE_DIAGNOSE_AFTER (a Go duration) logs them once while the
// wait goes on, that long after the last write. Every 5 s from the first
// write, a "scale: load" line gives the pairs of sites connected, the
// connections closed, the goroutines and the scheduler's latency;
// CHEOPS_SCALE_MAX_AWAKE replaces crdt.Config.MaxAwake at every site;
// CHEOPS_SCALE_CPUPROFILE=FILE profiles the write phase alone (then leave
// out -cpuprofile); CHEOPS_SCALE_GOROUTINEPROFILE=FILE writes the
// goroutines counted by stack (debug=1) and CHEOPS_SCALE_TRACE=FILE an
// execution trace of 2 s, both CHEOPS_SCALE_PROFILE_AT (a Go duration,
// 5 s by default) after the writes start; CHEOPS_SCALE_MEMPROFILE=FILE writes heap profiles
// before (FILE.before) and after it: `go tool pprof -sample_index
// alloc_space -diff_base FILE.before FILE` shows what it allocated.
// The write phase, for the CPU per write, the bytes allocated per write,
// these profiles and the crdt counters logged, runs from the first write
// until every site's watchers have seen its entries: the scan that then
// confirms it (every group woken at every site) is left out.
func BenchmarkScaleWrites(b *testing.B) {
	sites, resources := envInt("CHEOPS_SCALE_SITES", 20), envInt("CHEOPS_SCALE_RESOURCES", 1000)
	opt := ScaleProfile(Env{})
	// 100 sites take 30–60 s to see each other up (the full profile
	// gives them 3 minutes too).
	opt.FormWithin = 3 * time.Minute
	opt.WriteBudget = envDuration("CHEOPS_SCALE_WRITE_BUDGET", opt.WriteBudget)
	opt.ConvergeWithin = envDuration("CHEOPS_SCALE_CONVERGE_WITHIN", opt.ConvergeWithin)
	opt.diagnoseAfter = envDuration("CHEOPS_SCALE_DIAGNOSE_AFTER", 0)
	opt.listMissing = true
	names := make([]string, sites)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	rng := rand.New(rand.NewPCG(opt.Seed, uint64(sites)))
	scopes := make([][]string, resources)
	for i := range scopes {
		for _, p := range rng.Perm(sites)[:2+rng.IntN(2)] {
			scopes[i] = append(scopes[i], names[p])
		}
	}
	space := scopedSpace
	if os.Getenv("CHEOPS_SCALE_FULL") != "" {
		space = fullSpace
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The wait for convergence logs its progress on stderr as it goes.
	progress := slog.New(slog.NewTextHandler(os.Stderr, nil))
	for range b.N {
		b.StopTimer()
		heap0, _ := liveHeapAndGoroutines()
		ss, err := startScaleSites(context.Background(), b.TempDir(), names, opt.FormWithin)
		if err != nil {
			ss.close(log)
			b.Fatal(err)
		}
		counters0 := crdtCounters(ss)
		memProfile := os.Getenv("CHEOPS_SCALE_MEMPROFILE")
		writeHeapProfile(b, memProfile, ".before")
		stopProfile := startCPUProfile(b, os.Getenv("CHEOPS_SCALE_CPUPROFILE"))
		stopMidWrite := profileMidWrite(b, envDuration("CHEOPS_SCALE_PROFILE_AT", 5*time.Second),
			os.Getenv("CHEOPS_SCALE_GOROUTINEPROFILE"), os.Getenv("CHEOPS_SCALE_TRACE"))
		alloc0 := allocatedBytes()
		// The profiles, the bytes allocated and the counters cover what
		// the CPU per write counts: the writes until the watchers say
		// every site holds its entries, not the scan that confirms it
		// (or, without convergence, until the workload gives up).
		var allocated uint64
		var counters map[string]float64
		opt.converged = func() {
			allocated = allocatedBytes() - alloc0
			stopProfile()
			writeHeapProfile(b, memProfile, "")
			counters = crdtCounters(ss) // a scrape of every site: not in the profiles
		}
		b.StartTimer()
		stopWatch := ss.watchLoad(progress, "writes and convergence", 5*time.Second)
		w := ss.workload(context.Background(), progress, scopes, space, opt)
		stopWatch()
		stopMidWrite()
		b.StopTimer()
		if counters == nil {
			opt.converged()
		}
		// The live heap once converged (or given up), as the scale
		// scenario's heap/site: less what was there before the sites.
		heap1, _ := liveHeapAndGoroutines()
		b.Logf("crdt counters from the first write until converged, every site: %s", countersSince(counters, counters0))
		if w.missing != nil {
			b.Logf("%s", ss.describe(context.Background(), w.missing, 6))
			ss.lateArrivals(b, w.missing, envDuration("CHEOPS_SCALE_LATE", 0))
		}
		ss.close(log)
		if w.Error != "" {
			b.Fatal(w.Error)
		}
		b.ReportMetric(w.WritesPerSecond, "writes/s")
		b.ReportMetric(float64(w.CPUPerWrite)/float64(time.Microsecond), "cpu-µs/write")
		b.ReportMetric(ms(w.Converged), "converged-ms")
		b.ReportMetric((float64(heap1)-float64(heap0))/float64(sites)/(1<<20), "heap-MiB/site")
		if w.Written > 0 {
			b.ReportMetric(float64(allocated)/float64(2*w.Written), "alloc-B/write")
		}
	}
}

// crdtCounters sums the crdt package's counters over every site, for
// telling a slow write phase's causes apart (announcements dropped on
// links, wakes, blocks fetched rather than inlined, digest mismatches).
func crdtCounters(ss *scaleSites) map[string]float64 {
	sums := map[string]float64{}
	for _, s := range ss.sites {
		families, err := s.reg.Gather()
		if err != nil {
			continue
		}
		for _, f := range families {
			name := strings.TrimPrefix(f.GetName(), "cheops_crdt_")
			if name == f.GetName() {
				continue
			}
			for _, m := range f.GetMetric() {
				if c := m.GetCounter(); c != nil {
					sums[strings.TrimSuffix(name, "_total")] += c.GetValue()
					// A counter by cause or outcome: each label's sum too.
					if l := m.GetLabel(); len(l) == 1 && l[0].GetName() != "site" {
						sums[strings.TrimSuffix(name, "_total")+"{"+l[0].GetValue()+"}"] += c.GetValue()
					}
				}
			}
		}
	}
	return sums
}

// countersSince formats what each of crdtCounters' sums gained since
// before, leaving out those that did not move.
func countersSince(now, before map[string]float64) string {
	var parts []string
	for name, v := range now {
		if d := v - before[name]; d != 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", name, d))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// envInt reads a positive integer from the environment, def when unset.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// envDuration reads a positive Go duration from the environment, def
// when unset.
func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// startCPUProfile profiles the CPU into file until the returned function
// is called; no file: nothing.
func startCPUProfile(b *testing.B, file string) (stop func()) {
	if file == "" {
		return func() {}
	}
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// profileMidWrite writes, after the delay at, the goroutine profile
// (debug=1) into goroutines and an execution trace of 2 s into trace;
// an empty name skips that one. The returned function cancels what has
// not started and waits for what has.
func profileMidWrite(b *testing.B, at time.Duration, goroutines, trace string) (stop func()) {
	if goroutines == "" && trace == "" {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
			return
		case <-time.After(at):
		}
		// Side by side: at 100 sites the goroutine profile of 115,000
		// goroutines, its goroutine waiting 20 s for a processor, put a
		// trace taken after it at the end of the writes.
		var wg sync.WaitGroup
		if goroutines != "" {
			wg.Go(func() {
				if err := writeProfile("goroutine", goroutines); err != nil {
					b.Log(err)
				}
			})
		}
		if trace != "" {
			wg.Go(func() {
				if err := writeTrace(ctx, trace, 2*time.Second); err != nil {
					b.Log(err)
				}
			})
		}
		wg.Wait()
	}()
	return func() {
		cancel()
		<-done
	}
}

// writeProfile writes the named runtime profile into file, counted by
// stack (debug=1).
func writeProfile(name, file string) error {
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("profile %s: %w", name, err)
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 1); err != nil {
		return fmt.Errorf("profile %s: %w", name, err)
	}
	return nil
}

// writeTrace writes an execution trace of d (less if ctx ends first)
// into file.
func writeTrace(ctx context.Context, file string, d time.Duration) error {
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	if err := rtrace.Start(f); err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	rtrace.Stop()
	return nil
}

// writeHeapProfile writes the heap profile into file+suffix after a
// collection; no file: nothing.
func writeHeapProfile(b *testing.B, file, suffix string) {
	if file == "" {
		return
	}
	runtime.GC()
	f, err := os.Create(file + suffix)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// allocatedBytes is what the process allocated on the heap so far (less
// sensitive than CPU time to what else the machine runs).
func allocatedBytes() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// BenchmarkScaleIdle runs the scale scenario's idle-groups phase alone
// (20 in-process sites, two batches of 200 new groups of 2–3 sites with
// one write each, each batch left idle and watched for 10 s) and reports
// its figures: the second batch's slope (heap-B/group-member, its
// readings' spread, goroutines/group, group-B/group-min) and the first
// batch's figures since before any group (first-…). With
// CHEOPS_SCALE_MEMPROFILE=FILE it writes heap profiles after the first
// batch (FILE.before) and after the second: `go tool pprof -sample_index
// inuse_space -diff_base FILE.before FILE` shows what the second batch's
// idle groups hold, the one-time growth left out
// (CHEOPS_SCALE_MEMPROFILERATE=N samples every N bytes instead of every
// 512 KiB: the idle groups' few MiB need about 4096).
// CHEOPS_SCALE_SITES and CHEOPS_SCALE_GROUPS (per batch) change the sizes.
func BenchmarkScaleIdle(b *testing.B) {
	if rate := envInt("CHEOPS_SCALE_MEMPROFILERATE", 0); rate > 0 {
		runtime.MemProfileRate = rate
	}
	sites, groups := envInt("CHEOPS_SCALE_SITES", 20), envInt("CHEOPS_SCALE_GROUPS", 200)
	opt := ScaleProfile(Env{})
	names := make([]string, sites)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for range b.N {
		b.StopTimer()
		ss, err := startScaleSites(context.Background(), b.TempDir(), names, opt.FormWithin)
		if err != nil {
			ss.close(log)
			b.Fatal(err)
		}
		memProfile := os.Getenv("CHEOPS_SCALE_MEMPROFILE")
		ss.afterIdleBatch = func(batch int) {
			writeHeapProfile(b, memProfile, map[int]string{0: ".before", 1: ""}[batch])
		}
		b.StartTimer()
		idle := ss.idleGroups(context.Background(), rand.New(rand.NewPCG(opt.Seed, uint64(sites))), map[string]bool{}, groups, 10*time.Second)
		b.StopTimer()
		ss.close(log)
		if idle.Error != "" {
			b.Fatal(idle.Error)
		}
		b.ReportMetric(idle.HeapPerGroupMember, "heap-B/group-member")
		b.ReportMetric(idle.HeapPerGroupMemberMin, "heap-min-B/group-member")
		b.ReportMetric(idle.HeapPerGroupMemberMax, "heap-max-B/group-member")
		b.ReportMetric(idle.GoroutinesPerGroup, "goroutines/group")
		b.ReportMetric(idle.ProcessGoroutinesPerGroup, "process-goroutines/group")
		b.ReportMetric(idle.GroupBytesPerGroupMinute, "group-B/group-min")
		b.ReportMetric(float64(idle.SecondNewPairs), "second-new-pairs")
		if f := idle.First; f != nil {
			b.ReportMetric(f.HeapPerGroupMember, "first-heap-B/group-member")
			b.ReportMetric(f.GoroutinesPerGroup, "first-goroutines/group")
		}
	}
}

// BenchmarkScaleForm starts the scale scenario's in-process sites (100
// by default: CHEOPS_SCALE_SITES) and reports how long they took to all
// see each other up, and how many records the sites had to ask for after
// a probe because the peer's push was lost (node's
// cheops_membership_record_asks_total, summed). With
// CHEOPS_SCALE_IDLE_WINDOW (a Go duration) it then lets the formed sites
// settle for that long and reports the process's CPU over as long again,
// nothing written, in cores (idle-cores: membership, pubsub and libp2p's
// own work); CHEOPS_SCALE_CPUPROFILE=FILE profiles that window.
func BenchmarkScaleForm(b *testing.B) {
	sites := envInt("CHEOPS_SCALE_SITES", 100)
	names := make([]string, sites)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for range b.N {
		ss, err := startScaleSites(context.Background(), b.TempDir(), names, 3*time.Minute)
		b.StopTimer()
		var idle float64 // cores
		if window := envDuration("CHEOPS_SCALE_IDLE_WINDOW", 0); err == nil && window > 0 {
			time.Sleep(window)
			stopProfile := startCPUProfile(b, os.Getenv("CHEOPS_SCALE_CPUPROFILE"))
			cpu0, at := SelfCPU(), time.Now()
			time.Sleep(window)
			stopProfile()
			idle = (SelfCPU() - cpu0).Seconds() / time.Since(at).Seconds()
		}
		asks := 0.0
		for _, s := range ss.sites {
			asks += counterSum(b, s.node.Registry(), "cheops_membership_record_asks_total")
		}
		ss.close(log)
		if err != nil {
			b.Fatalf("%v (records asked after a probe: %.0f)", err, asks)
		}
		b.ReportMetric(ss.Formed.Seconds(), "formed-s")
		b.ReportMetric(asks, "record-asks")
		if idle > 0 {
			b.ReportMetric(idle, "idle-cores")
		}
		b.StartTimer()
	}
}

// counterSum sums the values of a counter family in a registry.
func counterSum(b *testing.B, reg *prometheus.Registry, name string) float64 {
	families, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// lateArrivals waits up to within, after a workload that did not
// converge, and logs how many of the missing entries are still missing
// every 5 s (each check reads them with Get, waking their groups).
func (ss *scaleSites) lateArrivals(b *testing.B, me *missingEntries, within time.Duration) {
	if within <= 0 {
		return
	}
	start := time.Now()
	last := -1
	for {
		n := ss.still(context.Background(), me)
		if n != last {
			b.Logf("%v after the convergence bound: %d of %d missing entries still missing", time.Since(start).Round(time.Second), n, len(me.keys))
			last = n
		}
		if n == 0 || time.Since(start) > within {
			if n > 0 {
				b.Logf("%s", ss.describe(context.Background(), me, 6))
				b.Logf("crdt counters, every site: %s", countersSince(crdtCounters(ss), nil))
			}
			return
		}
		time.Sleep(5 * time.Second)
	}
}

// The idle figures are a slope: the second batch's smallest heap reading
// less the first batch's smallest, per replica of the second batch, and
// its goroutines (a group's own, and the process's) and bytes less the
// first's; the spread pairs the readings taken at the same point of each
// window. The first batch is measured from the heap before any group.
func TestIdleBatchFigures(t *testing.T) {
	first := &idleBatch{groups: 10, members: 25, heap: []uint64{100_000, 140_000, 110_000}, goroutines: 50, groupGoroutines: 4,
		sent: traffic{groups: 600}}
	second := &idleBatch{groups: 10, members: 20, heap: []uint64{130_000, 150_000, 125_000}, goroutines: 53, groupGoroutines: 5,
		sent: traffic{groups: 600}}
	f1 := first.figures(50_000, 50, 2, nil, 10*time.Second)
	if f1.HeapPerGroupMember != 2000 || f1.HeapPerGroupMemberMin != 2000 || f1.HeapPerGroupMemberMax != 3600 ||
		f1.GoroutinesPerGroup != 0.2 || f1.ProcessGoroutinesPerGroup != 0 || f1.GroupBytesPerGroupMinute != 360 {
		t.Errorf("first batch: %+v", f1)
	}
	f2 := second.figures(0, 0, 0, first, 10*time.Second)
	// Smallest readings 125,000 - 100,000 over 20 replicas; same-point
	// growths 1,500, 500 and 750 per replica; one goroutine of a group
	// more, three of the process.
	if f2.HeapPerGroupMember != 1250 || f2.HeapPerGroupMemberMin != 500 || f2.HeapPerGroupMemberMax != 1500 ||
		f2.GoroutinesPerGroup != 0.1 || f2.ProcessGoroutinesPerGroup != 0.3 || f2.GroupBytesPerGroupMinute != 0 || f2.Groups != 10 || f2.Members != 20 {
		t.Errorf("second batch: %+v", f2)
	}
}

// The second batch of idle groups is drawn among the pairs of sites the
// first already shares, and newGroups keeps to what within accepts:
// every set it returns is new, of 2–3 sites, and within the pairs.
func TestNewGroupsWithinPairs(t *testing.T) {
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	rng := rand.New(rand.NewPCG(1, 100))
	used := map[string]bool{}
	first := newGroups(rng, names, used, 500, nil)
	if len(first) != 500 {
		t.Fatalf("%d groups in the first batch, want 500", len(first))
	}
	for _, g := range first {
		used[groupKey(g)] = true
	}
	covered := pairsOf(first)
	if len(covered) >= 4950 {
		t.Fatalf("the first batch covers %d pairs: the test needs pairs left out", len(covered))
	}
	second := newGroups(rng, names, used, 500, covered.hold)
	if len(second) != 500 {
		t.Fatalf("%d groups within the first batch's pairs, want 500", len(second))
	}
	for _, g := range second {
		if used[groupKey(g)] || len(g) < 2 || len(g) > 3 || !covered.hold(g) {
			t.Fatalf("group %v: used before, of %d sites, or outside the first batch's pairs", g, len(g))
		}
	}
	if n := len(pairsOf(second).minus(covered)); n != 0 {
		t.Fatalf("the second batch adds %d pairs", n)
	}
	if !(sitePairs{{"a", "b"}: true}).hold([]string{"b", "a"}) || (sitePairs{{"a", "b"}: true}).hold([]string{"a", "b", "c"}) {
		t.Fatal("hold: pairs are compared in name order, and every pair of the set is needed")
	}
}

// A full-replication run that missed lists its entries against the group
// of all sites, where they were written: a resource written is held
// everywhere, one never written is missing at every site, in that group.
func TestMissingFullReplicationEntries(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	names := []string{"s0", "s1", "s2"}
	ss, err := startScaleSites(ctx, t.TempDir(), names, time.Minute)
	t.Cleanup(func() { ss.close(log) })
	if err != nil {
		t.Fatal(err)
	}
	scopes := [][]string{{"s0", "s1"}, {"s1", "s2"}}
	opt := ScaleOptions{WriteBudget: time.Minute, ConvergeWithin: time.Minute}
	if w := ss.workload(ctx, log, scopes[:1], fullSpace, opt); w.Error != "" || w.Written != 1 {
		t.Fatalf("full replication of one resource: %+v", w)
	}
	me := ss.missing(ctx, scopes, []bool{true, true}, fullSpace)
	if len(me.keys) != 2*len(names) {
		t.Fatalf("%d entries missing, want resource 1's two at each of %d sites: %+v", len(me.keys), len(names), me.keys)
	}
	for _, mk := range me.keys {
		if mk.resource != 1 || !slices.Equal(mk.group, names) || mk.writer != "s1" {
			t.Errorf("missing %+v: want resource 1 in the group of all sites, written by s1", mk)
		}
	}
	if d := ss.describe(ctx, me, 6); !strings.Contains(d, "group {s0,s1,s2}") || strings.Contains(d, "not joined") {
		t.Errorf("description:\n%s", d)
	}
}
