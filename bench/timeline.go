package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"cheops/catalog"
)

// viewTimeline follows every site's catalog view through its watch stream
// (GET /v1/watch) and notes when each resource became visible and each
// operation arrived (kept as instants, read as offsets from start, which
// the caller sets to the heal before it reads), so that the time the catalogs agreed is known to the
// millisecond (the poll of whole catalogs is as coarse as one read of all
// of them) and can be split by site and by group.
type viewTimeline struct {
	start  time.Time
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// lastOp is when the last meta or op event came, lastAny the last
	// event of any kind.
	lastOp, lastAny time.Time
	visible         map[string]map[string]time.Time // site → resource → first meta event
	ops             map[string]map[string]time.Time // site → op id → first op event
	events          map[string]int                  // site → events read
	resyncs         map[string]int                  // site → resyncs read
	errs            []error
	// missing lists, per site and resource of its replica sets, what it
	// lacked at the heal: the resource itself ("" when it was not visible)
	// and the operations other replicas held (see expect); nil when
	// unknown.
	missing map[string]map[string][]string
}

// watchViews opens a watch stream on every site; start is the time the
// offsets are taken from (the heal). The streams are open when it returns.
func watchViews(ctx context.Context, c *Cluster, start time.Time) (*viewTimeline, error) {
	ctx, cancel := context.WithCancel(ctx)
	t := &viewTimeline{start: start, cancel: cancel, visible: map[string]map[string]time.Time{},
		ops: map[string]map[string]time.Time{}, events: map[string]int{}, resyncs: map[string]int{}}
	for _, s := range c.Sites {
		t.visible[s.Name], t.ops[s.Name] = map[string]time.Time{}, map[string]time.Time{}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.API+"/v1/watch", nil)
		if err != nil {
			t.stop()
			return nil, fmt.Errorf("bench: watch %s: %w", s.Name, err)
		}
		// No client timeout: the stream lasts until stop.
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.stop()
			return nil, fmt.Errorf("bench: watch %s: %w", s.Name, err)
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer resp.Body.Close()
			t.read(s.Name, bufio.NewScanner(resp.Body))
		}()
	}
	return t, nil
}

func (t *viewTimeline) read(site string, sc *bufio.Scanner) {
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		at := time.Now()
		var ch catalog.Change
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			t.mu.Lock()
			t.errs = append(t.errs, fmt.Errorf("%s: %w", site, err))
			t.mu.Unlock()
			continue
		}
		t.mu.Lock()
		t.events[site]++
		t.lastAny = at
		switch ch.Kind {
		case catalog.KindMeta, catalog.KindOp, catalog.KindRemoved:
			t.lastOp = at
		}
		switch ch.Kind {
		case catalog.KindMeta:
			if _, ok := t.visible[site][ch.ID]; !ok {
				t.visible[site][ch.ID] = at
			}
		case catalog.KindOp:
			if _, ok := t.ops[site][ch.Op]; !ok {
				t.ops[site][ch.Op] = at
			}
		case catalog.KindResync:
			t.resyncs[site]++
		}
		t.mu.Unlock()
	}
}

// last returns when the last event came, of any kind or (ops) of the
// kinds that change what resources and operations a view holds, and how
// many resyncs the streams carried (a resync means events were dropped).
func (t *viewTimeline) last(ops bool) (time.Duration, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, r := range t.resyncs {
		n += r
	}
	last := t.lastAny
	if ops {
		last = t.lastOp
	}
	if last.IsZero() {
		return 0, n
	}
	return last.Sub(t.start), n
}

// settle waits until no event (ops: no op or meta event) came for quiet
// and one came since the previous read (prev: what last returned then;
// negative before the first read), or at most limit: the views are worth
// reading then. A read of every whole catalog while they still change, or
// again when nothing changed since the previous one, would only take CPU
// from the agents and the relays it measures: waiting on a group that
// catches up last, the reads followed each other every 50 ms, each
// resolving thousands of resources on every agent under the catalog's
// lock, which the changes being measured wait for.
func (t *viewTimeline) settle(ctx context.Context, ops bool, quiet, limit, prev time.Duration) {
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		last, _ := t.last(ops)
		idle := time.Since(t.start) - last
		wait := quiet - idle
		if idle >= quiet {
			if last != prev {
				return
			}
			wait = quiet // nothing new since the previous read
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(wait, time.Until(end))):
		}
	}
}

// expect notes what each site of a replica set lacked at the heal: the
// resources of want it did not hold, and the operations that another
// replica of the resource held (read before the heal; after it, nothing
// writes an operation, so the replicas end with the union of theirs).
func (t *viewTimeline) expect(before map[string][]catalog.Resource, want map[string][]string) {
	held := map[string]map[string]map[string]bool{} // site → resource → op ids
	union := map[string]map[string]bool{}           // resource → op ids
	for site, list := range before {
		held[site] = map[string]map[string]bool{}
		for _, r := range list {
			ops := map[string]bool{}
			for _, op := range r.Operations {
				ops[op.ID] = true
			}
			held[site][r.ID] = ops
			if union[r.ID] == nil {
				union[r.ID] = map[string]bool{}
			}
			for id := range ops {
				union[r.ID][id] = true
			}
		}
	}
	missing := map[string]map[string][]string{}
	for id, sites := range want {
		for _, s := range sites {
			has, ok := held[s][id]
			var lack []string
			if !ok {
				lack = append(lack, "")
			}
			for op := range union[id] {
				if !has[op] {
					lack = append(lack, op)
				}
			}
			if len(lack) == 0 {
				continue
			}
			if missing[s] == nil {
				missing[s] = map[string][]string{}
			}
			missing[s][id] = lack
		}
	}
	t.mu.Lock()
	t.missing = missing
	t.mu.Unlock()
}

// lacking counts the (site, resource) pairs still lacking something they
// lacked at the heal, per the streams; -1 when expect was not called.
func (t *viewTimeline) lacking() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.missing == nil {
		return -1
	}
	n := 0
	for site, byID := range t.missing {
		for id, lack := range byID {
			for _, op := range lack {
				if op == "" {
					if _, ok := t.visible[site][id]; !ok {
						n++
						break
					}
				} else if _, ok := t.ops[site][op]; !ok {
					n++
					break
				}
			}
		}
	}
	return n
}

// awaitExpected waits, checking every step, until the streams say every
// site has what it lacked at the heal, or nothing changed for stall (the
// expectation may be wrong: the reads decide), or a stream carried a
// resync (events were dropped).
func (t *viewTimeline) awaitExpected(ctx context.Context, step, stall time.Duration) {
	for {
		if t.lacking() <= 0 {
			return
		}
		last, resyncs := t.last(true)
		if resyncs > 0 || time.Since(t.start)-last > stall {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(step):
		}
	}
}

func (t *viewTimeline) stop() {
	t.cancel()
	t.wg.Wait()
}

// viewAgreement is what the watch streams say of one convergence.
type viewAgreement struct {
	// At is when the last (resource, site) of the replica sets got the
	// last of the operations the catalogs finally agreed on.
	At time.Duration
	// Late counts (resource, site) pairs completed after the heal.
	Late int
	// BySite is, per site, the time its view completed and how many of
	// its resources completed after the heal.
	BySite map[string]siteAgreement
	// Slowest are the groups whose last resource completed last.
	Slowest []groupAgreement
	Resyncs int
}

type siteAgreement struct {
	At   time.Duration
	Late int
	// P50 of the completion times of the late ones.
	P50 time.Duration
}

type groupAgreement struct {
	Group string
	At    time.Duration
	Late  int
}

// agreement computes, from the final catalogs (which agree), when each
// site's view first held each resource with all its operations.
func (t *viewTimeline) agreement(cats map[string][]catalog.Resource, want map[string][]string) viewAgreement {
	t.mu.Lock()
	defer t.mu.Unlock()
	ops := map[string][]string{} // resource → final op ids
	for _, list := range cats {
		for _, r := range list {
			if _, ok := ops[r.ID]; ok {
				continue
			}
			for _, op := range r.Operations {
				ops[r.ID] = append(ops[r.ID], op.ID)
			}
		}
	}
	va := viewAgreement{BySite: map[string]siteAgreement{}}
	late := map[string][]time.Duration{}
	groups := map[string]*groupAgreement{}
	for id, sites := range want {
		g := slices.Clone(sites)
		sort.Strings(g)
		name := strings.Join(g, ",")
		if groups[name] == nil {
			groups[name] = &groupAgreement{Group: name}
		}
		for _, s := range sites {
			var done time.Duration
			seen := false
			if at, ok := t.visible[s][id]; ok {
				done, seen = at.Sub(t.start), true
			}
			for _, op := range ops[id] {
				if at, ok := t.ops[s][op]; ok {
					done, seen = max(done, at.Sub(t.start)), true
				}
			}
			if !seen {
				continue // held before the heal
			}
			va.Late++
			late[s] = append(late[s], done)
			va.At = max(va.At, done)
			groups[name].Late++
			groups[name].At = max(groups[name].At, done)
		}
	}
	for s, ds := range late {
		sa := siteAgreement{Late: len(ds), P50: percentile(ds, 50)}
		for _, d := range ds {
			sa.At = max(sa.At, d)
		}
		va.BySite[s] = sa
	}
	for _, g := range groups {
		va.Slowest = append(va.Slowest, *g)
	}
	sort.Slice(va.Slowest, func(i, j int) bool { return va.Slowest[i].At > va.Slowest[j].At })
	va.Slowest = va.Slowest[:min(5, len(va.Slowest))]
	for _, n := range t.resyncs {
		va.Resyncs += n
	}
	return va
}

func (va viewAgreement) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "views agree %.0f ms after the heal (%d resource-site pairs completed after it, %d resyncs)", ms(va.At), va.Late, va.Resyncs)
	var sites []string
	for s := range va.BySite {
		sites = append(sites, s)
	}
	sort.Strings(sites)
	for _, s := range sites {
		sa := va.BySite[s]
		fmt.Fprintf(&b, "; %s: %d late, p50 %.0f ms, last %.0f ms", s, sa.Late, ms(sa.P50), ms(sa.At))
	}
	for _, g := range va.Slowest {
		fmt.Fprintf(&b, "; group %s: %d late, last %.0f ms", g.Group, g.Late, ms(g.At))
	}
	return b.String()
}

// arrivals counts what the sites lacked at the heal, per expect: one per
// (site, resource) not visible and one per (site, operation) missing; 0
// when expect was not called. CPU per arrival is the heal's cost per unit
// of catalog work.
func (t *viewTimeline) arrivals() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, byID := range t.missing {
		for _, lack := range byID {
			n += len(lack)
		}
	}
	return n
}

// cpuSampler reads, every step, the CPU time (user + system) the agent
// processes of a cluster have used, so that the CPU spent between two
// instants of a heal (the heal, the catalogs agreeing) is known without
// counting what the reads that confirm it cost the agents afterwards.
// CPU time is steadier than wall time on a shared machine. Linux only
// (/proc, in ticks of 10 ms); elsewhere it reports nothing.
type cpuSampler struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	samples []cpuSample
}

type cpuSample struct {
	at  time.Time
	cpu time.Duration // the sum over the agents
	// apps and bench: the sites' applications, and this process (the
	// relays, the watch streams), which share the machine with them.
	apps, bench time.Duration
}

// ProcessCPU reads a process's user and system CPU time from
// /proc/PID/stat (fields 14 and 15, in ticks of USER_HZ, 100 on every
// Linux port Go runs on); false when it cannot.
func ProcessCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	i := bytes.LastIndexByte(b, ')')
	if err != nil || i < 0 {
		return 0, false
	}
	// After the command's name (in parentheses): state, then 10 fields
	// before utime and stime.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, true
}

// sampleCPU starts sampling the agents of c every step until stop.
func sampleCPU(ctx context.Context, c *Cluster, step time.Duration) *cpuSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &cpuSampler{cancel: cancel, done: make(chan struct{})}
	var apps []int
	for _, site := range c.Sites {
		if site.app != nil && site.app.Process != nil {
			apps = append(apps, site.app.Process.Pid)
		}
	}
	sample := func() {
		x := cpuSample{at: time.Now()}
		for name, d := range cpuTimes(c) {
			if name == "bench" {
				x.bench = d
			} else {
				x.cpu += d
			}
		}
		for _, pid := range apps {
			d, _ := ProcessCPU(pid)
			x.apps += d
		}
		s.mu.Lock()
		s.samples = append(s.samples, x)
		s.mu.Unlock()
	}
	// The first sample is taken before it returns: the instant the
	// caller takes next (the heal) is covered.
	sample()
	go func() {
		defer close(s.done)
		t := time.NewTicker(step)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			sample()
		}
	}()
	return s
}

// between returns the CPU the agents used from the last sample at or
// before from to the first at or after to (0 when the samples do not
// cover both).
func (s *cpuSampler) between(from, to time.Time) time.Duration {
	d := s.all(from, to)
	return d.cpu
}

// all is between for the agents (cpu), the applications and this
// process.
func (s *cpuSampler) all(from, to time.Time) cpuSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	var a, b *cpuSample
	for i := range s.samples {
		x := &s.samples[i]
		if !x.at.After(from) {
			a = x
		}
		if b == nil && !x.at.Before(to) {
			b = x
		}
	}
	if a == nil || b == nil {
		return cpuSample{}
	}
	return cpuSample{cpu: b.cpu - a.cpu, apps: b.apps - a.apps, bench: b.bench - a.bench}
}

func (s *cpuSampler) stop() {
	s.cancel()
	<-s.done
}
