package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"cheops/catalog"
)

// ConvergenceCase is one configuration of the convergence scenario.
type ConvergenceCase struct {
	Sites  int           `json:"sites"`
	RTT    time.Duration `json:"rtt_ns"`
	Writes int           `json:"writes"`
}

// ConvergenceRun is one repetition: cut, writes on both sides, heal.
type ConvergenceRun struct {
	Accepted int `json:"accepted"`
	Refused  int `json:"refused"`
	// Owed is how many (operation, site) executions were pending when
	// the partition healed.
	Owed int `json:"owed"`
	// Reconnected: every site sees every other up again, as of the last
	// of the state changes the sites report (GET /v1/sites "since").
	Reconnected time.Duration `json:"reconnected_ns"`
	// ReconnectedPoll is when a poll of every site's /v1/sites (every 50
	// ms, each read answered by an agent busy catching up) first saw
	// every site up: later than Reconnected by the poll's own latency.
	ReconnectedPoll time.Duration `json:"reconnected_poll_ns,omitempty"`
	// Catalog: every site's catalog holds every resource of its scopes
	// with the same operations as every other replica.
	Catalog time.Duration `json:"catalog_ns"`
	// Applied: nothing is pending anywhere (every owed operation has run
	// on its site's application); the applications were then checked.
	Applied time.Duration `json:"applied_ns"`
	// Arrivals counts what the sites' catalogs lacked at the heal: one
	// per (site, resource) not yet visible, one per (site, operation)
	// missing.
	Arrivals int `json:"arrivals,omitempty"`
	// CatalogCPU is the CPU time (user + system) all agents used from
	// the heal until the catalogs agreed (Catalog): the cost of the
	// catch-up, steadier than its wall time on a shared machine.
	CatalogCPU time.Duration `json:"catalog_cpu_ns,omitempty"`
}

// CPUPerArrival is the agents' CPU from the heal to the catalogs'
// agreement per arrival (0 when unknown).
func (r ConvergenceRun) CPUPerArrival() time.Duration {
	if r.Arrivals == 0 {
		return 0
	}
	return r.CatalogCPU / time.Duration(r.Arrivals)
}

// ConvergenceFigures are the runs of one case and their percentiles.
type ConvergenceFigures struct {
	ConvergenceCase
	Runs       []ConvergenceRun `json:"runs"`
	CatalogP50 time.Duration    `json:"catalog_p50_ns"`
	CatalogP99 time.Duration    `json:"catalog_p99_ns"`
	AppliedP50 time.Duration    `json:"applied_p50_ns"`
	AppliedP99 time.Duration    `json:"applied_p99_ns"`
	// Target is the bound for the catalog: 1 s + 2 RTT.
	Target time.Duration `json:"target_ns"`
}

// ConvergenceResult is the report of `cheops bench convergence`.
type ConvergenceResult struct {
	Repetitions int                  `json:"repetitions"`
	Resources   int                  `json:"resources_before"`
	Cases       []ConvergenceFigures `json:"cases"`
	Setup       string               `json:"setup"`
}

// ConvergenceOptions sets the cases; zero values take the profile's.
type ConvergenceOptions struct {
	Cases       []ConvergenceCase
	Repetitions int
	// Resources created before the first partition.
	Resources int
	Seed      uint64
}

// ConvergenceProfile is the quick profile, or the full one.
func ConvergenceProfile(env Env) ConvergenceOptions {
	sites, rtts, writes, reps := []int{5}, []time.Duration{0, 80 * time.Millisecond}, []int{1000}, 3
	if env.Full {
		sites, rtts, writes, reps = []int{3, 5, 10}, []time.Duration{0, 20 * time.Millisecond, 80 * time.Millisecond}, []int{1000, 10000}, 5
	}
	if env.Sites > 0 {
		sites = []int{env.Sites}
	}
	var cases []ConvergenceCase
	for _, n := range sites {
		for _, r := range rtts {
			for _, w := range writes {
				cases = append(cases, ConvergenceCase{Sites: n, RTT: r, Writes: w})
			}
		}
	}
	return ConvergenceOptions{Cases: cases, Repetitions: reps, Resources: 50, Seed: 1}
}

// RunConvergence runs every case on a fresh cluster of agent processes:
// resources with random scopes of 2–3 sites, then, per repetition, the
// sites split in two halves, W writes spread over both sides (half
// creates with random scopes, half updates of existing resources, each
// sent to a site of the resource's scope), the heal, and the time until
// catalogs and applications are what they must be.
func RunConvergence(ctx context.Context, env Env, opt ConvergenceOptions) (*ConvergenceResult, error) {
	if len(env.Agents) > 0 {
		return nil, errors.New("convergence cuts the network between sites, which only a local cluster allows; run it without --agents")
	}
	res := &ConvergenceResult{Repetitions: opt.Repetitions, Resources: opt.Resources,
		Setup: "agent processes on loopback, json-server behind each, links through user-space relays adding the RTT; default probe settings"}
	for i, cs := range opt.Cases {
		env.Log.Info("convergence case", "sites", cs.Sites, "rtt", cs.RTT, "writes", cs.Writes)
		fig, err := runConvergenceCase(ctx, env, cs, opt, filepath.Join(env.Dir, fmt.Sprintf("convergence-%d", i)))
		if err != nil {
			return res, err
		}
		res.Cases = append(res.Cases, fig)
	}
	return res, nil
}

func runConvergenceCase(ctx context.Context, env Env, cs ConvergenceCase, opt ConvergenceOptions, dir string) (ConvergenceFigures, error) {
	fig := ConvergenceFigures{ConvergenceCase: cs, Target: time.Second + 2*cs.RTT}
	var names []string
	for i := range cs.Sites {
		names = append(names, fmt.Sprintf("s%02d", i))
	}
	c, err := StartCluster(ctx, ClusterOptions{Binary: env.Binary, Sites: names, Dir: dir, RTT: cs.RTT, Log: env.Log,
		AgentArgs: strings.Fields(os.Getenv(AgentArgsEnv))})
	if err != nil {
		return fig, err
	}
	defer c.Close()
	defer keepMetrics(ctx, c, fmt.Sprintf("rtt%d-", cs.RTT.Milliseconds()))
	rng := rand.New(rand.NewPCG(opt.Seed, uint64(cs.Sites)))
	w := &workload{c: c, rng: rng, log: env.Log}
	if _, _, err := w.writeCounted(ctx, opt.Resources, 1.0, names); err != nil {
		return fig, err
	}
	if _, err := w.waitConverged(ctx, 2*time.Minute, false); err != nil {
		return fig, fmt.Errorf("before the first partition: %w", err)
	}
	for rep := range opt.Repetitions {
		run, err := w.partitionRun(ctx, cs, names)
		if err != nil {
			return fig, fmt.Errorf("repetition %d: %w", rep+1, err)
		}
		env.Log.Info("convergence run", "sites", cs.Sites, "rtt", cs.RTT, "writes", cs.Writes, "rep", rep+1,
			"owed", run.Owed, "reconnected", run.Reconnected, "reconnected (poll)", run.ReconnectedPoll, "catalog", run.Catalog, "applied", run.Applied,
			"arrivals", run.Arrivals, "catalog CPU", run.CatalogCPU, "CPU per arrival", run.CPUPerArrival())
		fig.Runs = append(fig.Runs, run)
	}
	var cat, app []time.Duration
	for _, r := range fig.Runs {
		cat, app = append(cat, r.Catalog), append(app, r.Applied)
	}
	fig.CatalogP50, fig.CatalogP99 = percentile(cat, 50), percentile(cat, 99)
	fig.AppliedP50, fig.AppliedP99 = percentile(app, 50), percentile(app, 99)
	return fig, nil
}

// workload writes to a cluster and knows what every site must hold.
type workload struct {
	c   *Cluster
	rng *rand.Rand
	log *slog.Logger
	mu  sync.Mutex
	// resources maps a global id to its replica set.
	resources map[string][]string
	// beforeHeal is every site's catalog as owed read it, just before
	// the heal (nil: not read).
	beforeHeal map[string][]catalog.Resource
	// views, when set, are the watch streams healAndTime takes: opened
	// before the read of beforeHeal, they miss nothing that read missed.
	views *viewTimeline
	heals int // heals profiled so far (ProfileEnv)
}

type writeJob struct {
	site, method, path, scope string
	body                      map[string]any
	sites                     []string
}

// writeCounted sends n writes from the given sites: a share of creates
// (the rest updates), each sent to a site of the resource's scope, and
// counts the accepted and refused ones.
func (w *workload) writeCounted(ctx context.Context, n int, creates float64, from []string) (accepted, refused int, err error) {
	w.mu.Lock()
	if w.resources == nil {
		w.resources = map[string][]string{}
	}
	var ids []string
	for id, sites := range w.resources {
		for _, s := range sites {
			if slices.Contains(from, s) {
				ids = append(ids, id)
				break
			}
		}
	}
	sort.Strings(ids)
	var jobs []writeJob
	all := w.c.Names()
	for i := range n {
		if len(ids) == 0 || w.rng.Float64() < creates {
			k := 2 + w.rng.IntN(2)
			k = min(k, len(all))
			perm := w.rng.Perm(len(all))
			var sites []string
			for _, p := range perm[:k] {
				sites = append(sites, all[p])
			}
			// Sent to a member on the writing side, when there is one.
			var local []string
			for _, s := range sites {
				if slices.Contains(from, s) {
					local = append(local, s)
				}
			}
			if len(local) == 0 {
				sites[0] = from[w.rng.IntN(len(from))]
				local = sites[:1]
			}
			jobs = append(jobs, writeJob{site: local[w.rng.IntN(len(local))], method: http.MethodPost, path: "/svc/posts/posts",
				scope: "{posts: " + strings.Join(sites, " & ") + "}", body: map[string]any{"title": fmt.Sprintf("w%d", i), "n": 0}, sites: sites})
			continue
		}
		id := ids[w.rng.IntN(len(ids))]
		var local []string
		for _, s := range w.resources[id] {
			if slices.Contains(from, s) {
				local = append(local, s)
			}
		}
		jobs = append(jobs, writeJob{site: local[w.rng.IntN(len(local))], method: http.MethodPatch, path: "/svc/posts/posts/" + id,
			body: map[string]any{"n": i}})
	}
	w.mu.Unlock()

	// Writes are spread over the workers whatever their resource:
	// concurrent updates of one resource through different sites are
	// ordered by each replica's executor.
	const workers = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	queues := make([]chan writeJob, workers)
	for i := range queues {
		queues[i] = make(chan writeJob, len(jobs))
	}
	for i, j := range jobs {
		queues[i%workers] <- j
	}
	for _, next := range queues {
		close(next)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				code, hdr, body, err := w.c.Do(ctx, j.site, j.method, j.path, j.scope, j.body)
				mu.Lock()
				switch {
				case err != nil:
					if firstErr == nil {
						firstErr = fmt.Errorf("%s %s at %s: %w", j.method, j.path, j.site, err)
					}
				case code >= 200 && code < 300:
					accepted++
					if j.method == http.MethodPost {
						w.mu.Lock()
						w.resources[hdr.Get("X-Cheops-Resource")] = j.sites
						w.mu.Unlock()
					}
				case code == http.StatusNotFound && strings.Contains(string(body), "unknown_resource"):
					// A resource created on the other side a moment
					// before a flap cut it off again: this site has not
					// heard of it yet, and says so.
					refused++
				default:
					refused++
					if firstErr == nil {
						firstErr = fmt.Errorf("%s %s at %s: %d %s", j.method, j.path, j.site, code, tail(string(body), 300))
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return accepted, refused, firstErr
}

// partitionRun: cut the sites in two halves, write on both sides, heal,
// and time the convergence.
func (w *workload) partitionRun(ctx context.Context, cs ConvergenceCase, names []string) (ConvergenceRun, error) {
	var run ConvergenceRun
	perm := w.rng.Perm(len(names))
	var side1, side2 []string
	for i, p := range perm {
		if i < len(names)/2 {
			side1 = append(side1, names[p])
		} else {
			side2 = append(side2, names[p])
		}
	}
	w.c.Net.Cut(side1, side2)
	// Writes start once each side sees the other down, as they would in
	// a partition that lasts.
	if err := w.c.WaitStates(ctx, time.Minute, side1, side2, "down"); err != nil {
		return run, err
	}
	if err := w.c.WaitStates(ctx, time.Minute, side2, side1, "down"); err != nil {
		return run, err
	}
	var wg sync.WaitGroup
	var errs [2]error
	var acc, ref [2]int
	for i, side := range [][]string{side1, side2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acc[i], ref[i], errs[i] = w.writeCounted(ctx, cs.Writes/2, 0.5, side)
		}()
	}
	wg.Wait()
	run.Accepted, run.Refused = acc[0]+acc[1], ref[0]+ref[1]
	if err := errors.Join(errs[0], errs[1]); err != nil {
		return run, err
	}
	owed, err := w.beforeTheHeal(ctx)
	if err != nil {
		return run, err
	}
	run.Owed = owed
	t, err := w.healAndTime(ctx, names, 2*time.Minute, 5*time.Minute, 10*time.Minute)
	run.Reconnected, run.ReconnectedPoll, run.Catalog, run.Applied = t.reconnected, t.polled, t.catalog, t.applied
	run.Arrivals, run.CatalogCPU = t.arrivals, t.catalogCPU
	return run, err
}

// beforeTheHeal opens the watch streams healAndTime times the heal with,
// then reads every catalog (owed): an operation arriving between the two
// is in the read or in the streams, never expected as an event that
// already came. It returns the executions owed.
func (w *workload) beforeTheHeal(ctx context.Context) (int, error) {
	views, err := watchViews(ctx, w.c, time.Now())
	if err != nil {
		return 0, err
	}
	w.views = views
	owed, err := w.owed(ctx)
	if err != nil {
		views.stop()
		w.views = nil
		return 0, err
	}
	return owed, nil
}

// healTimes are measured from a heal; polled is when the poll of the
// sites' states saw them all up (see ConvergenceRun.ReconnectedPoll).
// arrivals and catalogCPU are ConvergenceRun's.
type healTimes struct {
	reconnected, polled, catalog, applied time.Duration
	arrivals                              int
	catalogCPU                            time.Duration
}

// ProfileEnv names the environment variable that, set to a duration
// ("3s"), has every heal of the convergence scenario take a CPU profile
// of every agent for that long from the heal, written where LogsEnv
// says (rtt<ms>-heal<n>-<site>.pprof). The agents must serve their
// profiles: CHEOPS_BENCH_AGENT_ARGS=--pprof.
const ProfileEnv = "CHEOPS_BENCH_PROFILE"

// profileHeal starts, when ProfileEnv asks for it, a CPU profile of
// every agent; wait returns when they are written.
func (w *workload) profileHeal(ctx context.Context) (wait func()) {
	d, err := time.ParseDuration(os.Getenv(ProfileEnv))
	dir := os.Getenv(LogsEnv)
	if err != nil || d <= 0 || dir == "" {
		return func() {}
	}
	w.heals++
	var wg sync.WaitGroup
	for _, s := range w.c.Sites {
		path := filepath.Join(dir, fmt.Sprintf("rtt%d-heal%d-%s.pprof", w.c.opt.RTT.Milliseconds(), w.heals, s.Name))
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, err := w.c.get(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", s.API, int(max(1, d.Seconds()))))
			if err == nil {
				err = os.WriteFile(path, body, 0o644)
			}
			if err != nil {
				w.log.Warn("profile an agent during a heal", "site", s.Name, "err", err)
			}
		}()
	}
	return wg.Wait
}

// healAndTime heals the network and times, from the heal, until every
// site sees every other up, the catalogs agree and nothing is pending;
// then it checks the applications.
//
// The times come from the sites' watch streams, opened before the heal:
// the catalogs agree when the last site of a resource's replica set got
// the last of the operations they finally agree on, and nothing is
// pending as of the last change any site reported before a read found
// it so. Whole catalogs are read only to confirm, when the streams have
// settled: a read of thousands of resources from every site every 50 ms
// took up to 2 s a round under load, so it made the time coarse, and it
// took CPU from the agents and from the relays in this process. Even one
// read while the catalogs converge delays what it measures: it took 0.3
// to 2 s under load, and each agent resolves its whole catalog for it
// under the catalog's lock, which every change being merged waits for
// (one agent's changes waited 1 s behind it). So the streams are also
// checked against what every replica must end with, known from the
// catalogs read just before the heal (no operation is written after it):
// the first read comes when the streams say every site has it all
// (viewTimeline.expect).
func (w *workload) healAndTime(ctx context.Context, names []string, reconnectWithin, catalogWithin, appliedWithin time.Duration) (healTimes, error) {
	var t healTimes
	views := w.views
	w.views = nil
	if views == nil {
		var err error
		if views, err = watchViews(ctx, w.c, time.Now()); err != nil {
			return t, err
		}
	}
	defer views.stop()
	if w.beforeHeal != nil {
		views.expect(w.beforeHeal, w.expected())
		w.beforeHeal = nil
	}
	cpu := sampleCPU(ctx, w.c, 20*time.Millisecond)
	defer cpu.stop()
	t.arrivals = views.arrivals()
	profiled := w.profileHeal(ctx)
	defer profiled()
	healed := time.Now()
	views.start = healed
	w.c.Net.Heal()
	reconnected := make(chan [2]time.Duration, 1)
	go func() {
		defer close(reconnected)
		if w.c.WaitStates(ctx, reconnectWithin, names, names, "up") == nil {
			polled := time.Since(healed)
			last, err := lastUp(ctx, w.c, names, healed)
			if err != nil || last <= 0 {
				w.log.Warn("no state change times: the poll's time counts", "err", err)
				last = polled
			}
			reconnected <- [2]time.Duration{min(last, polled), polled}
		}
	}()
	catalogAt, cats, err := w.waitAgreed(ctx, catalogWithin, false, views)
	if err != nil {
		return t, fmt.Errorf("catalogs: %w", err)
	}
	t.catalog = max(0, catalogAt.Sub(healed))
	if va := views.agreement(cats, w.expected()); va.Resyncs == 0 {
		// Not later than the read that confirmed it.
		t.catalog = min(t.catalog, va.At)
		w.log.Info("catalogs agree", "after heal", t.catalog, "views", va.String())
	}
	used := cpu.all(healed, healed.Add(t.catalog))
	t.catalogCPU = used.cpu
	w.log.Info("CPU used until the catalogs agreed", "agents", used.cpu, "applications", used.apps, "bench", used.bench, "arrivals", t.arrivals)
	appliedAt, _, err := w.waitAgreed(ctx, appliedWithin, true, views)
	if err != nil {
		return t, fmt.Errorf("applications: %w", err)
	}
	t.applied = max(t.catalog, appliedAt.Sub(healed))
	r := <-reconnected
	t.reconnected, t.polled = r[0], r[1]
	return t, w.checkApplications(ctx)
}

// catalogs reads every site's whole catalog.
func (w *workload) catalogs(ctx context.Context) (map[string][]catalog.Resource, error) {
	out := map[string][]catalog.Resource{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	for _, s := range w.c.Sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var list []catalog.Resource
			err := w.c.getJSON(ctx, s.API+"/v1/resources", &list)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			out[s.Name] = list
		}()
	}
	wg.Wait()
	return out, firstErr
}

// owed counts the (operation, site) executions pending in the catalogs.
//
// The catalogs it reads are kept for the heal that follows (beforeHeal).
func (w *workload) owed(ctx context.Context) (int, error) {
	cats, err := w.catalogs(ctx)
	w.beforeHeal = nil
	if err != nil {
		return 0, err
	}
	w.beforeHeal = cats
	seen := map[string]bool{}
	for _, list := range cats {
		for _, r := range list {
			for site, v := range r.PerSite {
				for _, op := range v.Pending {
					seen[op+"@"+site] = true
				}
			}
		}
	}
	return len(seen), nil
}

// waitConverged reads the catalogs until every resource is held by every
// site of its replica set with the same operations (and, with applied,
// nothing pending), and returns when that was reached and the catalogs
// read. Without views it reads every 50 ms, and the time is the end of
// the read that found it. With views it reads once the streams settle
// (no change for 100 ms, or 1 s since the last read), and the time is
// that of the last change the streams reported before the read ended:
// the state read holds since then (the read confirmed it).
func (w *workload) waitConverged(ctx context.Context, within time.Duration, applied bool) (time.Time, error) {
	at, _, err := w.waitAgreed(ctx, within, applied, nil)
	return at, err
}

// waitAgreed is waitConverged timed by the sites' watch streams when
// views is not nil; it returns the catalogs it read last.
func (w *workload) waitAgreed(ctx context.Context, within time.Duration, applied bool, views *viewTimeline) (time.Time, map[string][]catalog.Resource, error) {
	var (
		at   time.Time
		cats map[string][]catalog.Resource
	)
	lastLog := time.Now()
	prev := time.Duration(-1) // the views' last event as of the previous read
	reads, readTime := 0, time.Duration(0)
	defer func() {
		if views != nil {
			w.log.Info("catalog reads while waiting", "applied", applied, "reads", reads, "read time", readTime)
		}
	}()
	if views != nil && !applied {
		views.awaitExpected(ctx, 10*time.Millisecond, 3*time.Second)
		w.log.Info("streams say the replicas are complete", "lacking", views.lacking(), "after heal", time.Since(views.start))
	}
	err := waitFor(ctx, within, "catalogs converge", func() error {
		if views != nil {
			views.settle(ctx, !applied, 100*time.Millisecond, time.Second, prev)
			prev, _ = views.last(!applied)
		}
		var err error
		start := time.Now()
		cats, err = w.catalogs(ctx)
		reads, readTime = reads+1, readTime+time.Since(start)
		if err != nil {
			return err
		}
		at = time.Now()
		if views != nil {
			if last, resyncs := views.last(!applied); resyncs == 0 {
				at = views.start.Add(last)
			}
		}
		err = converged(cats, w.expected(), applied)
		if err != nil && time.Since(lastLog) > 5*time.Second {
			w.log.Info("waiting for convergence", "applied", applied, "unmet", err)
			lastLog = time.Now()
		}
		return err
	})
	return at, cats, err
}

func (w *workload) expected() map[string][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.resources)
}

// converged checks catalogs against the replica sets the driver created.
func converged(cats map[string][]catalog.Resource, want map[string][]string, applied bool) error {
	ops := map[string]map[string]string{} // resource → site → sorted op ids
	for site, list := range cats {
		for _, r := range list {
			var ids []string
			for _, op := range r.Operations {
				ids = append(ids, op.ID)
			}
			if applied {
				// Outcomes in an operation are what its origin saw; the
				// site views say what each replica has run since.
				for owner, v := range r.PerSite {
					if v.Status == catalog.StatusPending || len(v.Pending) > 0 {
						return fmt.Errorf("%s's catalog: %s still owes %v on %s", site, owner, v.Pending, r.ID)
					}
				}
			}
			sort.Strings(ids)
			if ops[r.ID] == nil {
				ops[r.ID] = map[string]string{}
			}
			ops[r.ID][site] = strings.Join(ids, ",")
		}
	}
	for id, sites := range want {
		var first string
		for i, s := range sites {
			got, ok := ops[id][s]
			if !ok {
				return fmt.Errorf("%s does not hold %s yet", s, id)
			}
			if i == 0 {
				first = got
			} else if got != first {
				return fmt.Errorf("%s and %s disagree on the operations of %s", sites[0], s, id)
			}
		}
		for s := range ops[id] {
			if !slices.Contains(sites, s) {
				return fmt.Errorf("%s holds %s outside its scope", s, id)
			}
		}
	}
	return nil
}

// checkApplications asserts that every application holds exactly the
// resources of its scopes and that replicas agree on their content.
func (w *workload) checkApplications(ctx context.Context) error {
	cats, err := w.catalogs(ctx)
	if err != nil {
		return err
	}
	apps := map[string]map[string]map[string]any{}
	for _, s := range w.c.Sites {
		var items []map[string]any
		if err := w.c.getJSON(ctx, s.App+"/posts", &items); err != nil {
			return err
		}
		apps[s.Name] = map[string]map[string]any{}
		for _, it := range items {
			apps[s.Name][fmt.Sprint(it["id"])] = it
		}
	}
	want := w.expected()
	held := map[string]int{}
	for id, sites := range want {
		var first []byte
		for _, s := range sites {
			held[s]++
			var local string
			for _, r := range cats[s] {
				if r.ID == id {
					local = r.PerSite[s].LocalID
				}
			}
			item, ok := apps[s][local]
			if !ok {
				return fmt.Errorf("%s's application lacks %s (local id %q)", s, id, local)
			}
			clean := map[string]any{"title": item["title"], "n": item["n"]}
			b, _ := json.Marshal(clean)
			if first == nil {
				first = b
			} else if string(b) != string(first) {
				var entry []byte
				for _, r := range cats[s] {
					if r.ID == id {
						entry, _ = json.Marshal(r)
					}
				}
				return fmt.Errorf("replicas of %s differ: %s at %s, %s at %s; catalog at %s: %s", id, first, sites[0], b, s, s, entry)
			}
		}
	}
	for _, s := range w.c.Sites {
		if len(apps[s.Name]) != held[s.Name] {
			return fmt.Errorf("%s's application holds %d items, its scopes %d", s.Name, len(apps[s.Name]), held[s.Name])
		}
	}
	return nil
}

// percentile of durations, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// convergenceTargets are the bounds each case is held to: reconnected
// (every site sees every other up) ≤ 2 RTT + 0.3 s after the heal;
// catalogs agree ≤ 0.5 s + 2 RTT after reconnecting; applications agree
// ≤ 2 s after the heal on loopback (RTT 0).
func convergenceTargets(rtt time.Duration) (reconnect, catalogAfterReconnect, applied time.Duration) {
	applied = -1 // no target off loopback
	if rtt == 0 {
		applied = 2 * time.Second
	}
	return 2*rtt + 300*time.Millisecond, 500*time.Millisecond + 2*rtt, applied
}

// targets holds a case's p99s against its targets, and which it missed.
func (c ConvergenceFigures) targets() (rows [3]string, missed []string) {
	var recs, cats []time.Duration
	for _, run := range c.Runs {
		recs = append(recs, run.Reconnected)
		cats = append(cats, run.Catalog-run.Reconnected)
	}
	tRec, tCat, tApp := convergenceTargets(c.RTT)
	check := func(i int, name string, got, target time.Duration) {
		rows[i] = fmt.Sprintf("%.0f ≤ %.0f: met", ms(got), ms(target))
		if target < 0 {
			rows[i] = fmt.Sprintf("%.0f (no target)", ms(got))
			return
		}
		if got > target {
			rows[i] = fmt.Sprintf("%.0f ≤ %.0f: MISSED", ms(got), ms(target))
			missed = append(missed, fmt.Sprintf("%d sites %.0f ms: %s p99 %.0f ms > %.0f ms", c.Sites, ms(c.RTT), name, ms(got), ms(target)))
		}
	}
	check(0, "reconnected", percentile(recs, 99), tRec)
	check(1, "catalogs after reconnect", max(0, percentile(cats, 99)), tCat)
	check(2, "applications", c.AppliedP99, tApp)
	return rows, missed
}

// Table prints one line per case beside the targets.
func (r *ConvergenceResult) Table(out io.Writer) {
	fmt.Fprintf(out, "convergence after a partition heals (%s; %d repetitions, %d resources before)\n\n", r.Setup, r.Repetitions, r.Resources)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sites\tRTT ms\twrites\towed at heal\treconnected p50 ms\tcatalog p50 ms\tcatalog p99 ms\tapplied p50 ms\tapplied p99 ms\t")
	for _, c := range r.Cases {
		var owed []int
		var rec []time.Duration
		for _, run := range c.Runs {
			owed = append(owed, run.Owed)
			rec = append(rec, run.Reconnected)
		}
		slices.Sort(owed)
		if len(owed) == 0 {
			owed = []int{0}
		}
		fmt.Fprintf(tw, "%d\t%.0f\t%d\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t\n", c.Sites, ms(c.RTT), c.Writes, owed[len(owed)/2],
			ms(percentile(rec, 50)), ms(c.CatalogP50), ms(c.CatalogP99), ms(c.AppliedP50), ms(c.AppliedP99))
	}
	tw.Flush()
	fmt.Fprintln(out, "\ncatalog: every replica holds every operation; applied: nothing pending, applications checked equal (times from the heal).")
	fmt.Fprintln(out, "\ntargets (p99, ms)")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sites\tRTT ms\treconnected ≤ 2 RTT + 300\tcatalogs after reconnect ≤ 500 + 2 RTT\tapplications ≤ 2000 (loopback)\t")
	for _, c := range r.Cases {
		rows, _ := c.targets()
		fmt.Fprintf(tw, "%d\t%.0f\t%s\t%s\t%s\t\n", c.Sites, ms(c.RTT), rows[0], rows[1], rows[2])
	}
	tw.Flush()
}

// Missed lists the targets this run missed (for --strict).
func (r *ConvergenceResult) Missed() []string {
	var out []string
	for _, c := range r.Cases {
		_, m := c.targets()
		out = append(out, m...)
	}
	return out
}

func (r *ConvergenceResult) Plot(dir, prefix string) ([]string, error) {
	p := plot.New()
	p.Title.Text = "Convergence after heal (p50 of repetitions)"
	p.Y.Label.Text = "ms after heal"
	var names []string
	cat, app, tgt := plotter.Values{}, plotter.Values{}, plotter.Values{}
	for _, c := range r.Cases {
		names = append(names, fmt.Sprintf("%d sites\n%.0f ms RTT\n%d writes", c.Sites, ms(c.RTT), c.Writes))
		cat = append(cat, ms(c.CatalogP50))
		app = append(app, ms(c.AppliedP50))
		tgt = append(tgt, ms(c.Target))
	}
	w := vg.Points(12)
	for i, s := range []struct {
		name string
		v    plotter.Values
	}{{"target (1 s + 2 RTT)", tgt}, {"catalog converged", cat}, {"applications converged", app}} {
		b, err := plotter.NewBarChart(s.v, w)
		if err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		b.Offset = vg.Length(i-1) * w
		b.Color = plotutil.Color(i)
		b.LineStyle.Width = 0
		p.Add(b)
		p.Legend.Add(s.name, b)
	}
	p.Legend.Top = true
	p.NominalX(names...)
	path := filepath.Join(dir, prefix+".svg")
	if err := p.Save(8*vg.Inch, 4*vg.Inch, path); err != nil {
		return nil, fmt.Errorf("bench: save plot: %w", err)
	}
	return []string{path}, nil
}

// AgentArgsEnv names the environment variable whose words are added to
// every agent's command line in the convergence scenario (for a look at
// a slow run: "--log-level debug").
const AgentArgsEnv = "CHEOPS_BENCH_AGENT_ARGS"

// keepMetrics writes, when LogsEnv names a directory, every site's
// /metrics and logs so far there (PREFIXNAME.metrics, PREFIXNAME.log)
// before the cluster closes: a run has a cluster per case.
func keepMetrics(ctx context.Context, c *Cluster, prefix string) {
	dir := os.Getenv(LogsEnv)
	if dir == "" {
		return
	}
	for _, s := range c.Sites {
		body, err := c.get(ctx, s.API+"/metrics")
		if err != nil {
			slog.Warn("keep a site's metrics", "site", s.Name, "err", err)
			continue
		}
		path := filepath.Join(dir, prefix+s.Name+".metrics")
		if err := os.WriteFile(path, body, 0o644); err != nil {
			slog.Warn("keep a site's metrics", "path", path, "err", err)
		}
		path = filepath.Join(dir, prefix+s.Name+".log")
		if err := os.WriteFile(path, []byte(s.logs.String()), 0o644); err != nil {
			slog.Warn("keep a site's logs", "path", path, "err", err)
		}
	}
}

// lastUp reads every site's /v1/sites once all see each other up, and
// returns, from healed, the last state change any of them reports (0
// when none changed after healed): when the last pair came up, however
// late the reads that saw it.
func lastUp(ctx context.Context, c *Cluster, names []string, healed time.Time) (time.Duration, error) {
	var last time.Duration
	for _, o := range names {
		var sites []struct {
			Site  string    `json:"site"`
			State string    `json:"state"`
			Since time.Time `json:"since"`
		}
		if err := c.getJSON(ctx, c.Site(o).API+"/v1/sites", &sites); err != nil {
			return 0, err
		}
		for _, s := range sites {
			if s.Site == o || s.Since.IsZero() {
				continue
			}
			if s.State != "up" {
				return 0, fmt.Errorf("%s sees %s %s again", o, s.Site, s.State)
			}
			last = max(last, s.Since.Sub(healed))
		}
	}
	return last, nil
}
