package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"cheops/bench/wan"
	"cheops/node"
)

// ScaleProcessCase sizes the process-level check: agent processes on
// loopback, resources with scopes of 2–3 of them created through the
// agents, half before a cut of the sites in two halves and half during
// it (on both sides), then the heal.
type ScaleProcessCase struct {
	Agents    int `json:"agents"`
	Resources int `json:"resources"`
	// CreateBudget bounds each half of the creates (before the cut,
	// during it); 0: none. Creates stop when it is spent, and the check
	// goes on with what was created.
	CreateBudget time.Duration `json:"create_budget_ns,omitempty"`
}

// ScaleProcessFigures is what the process-level check measured.
type ScaleProcessFigures struct {
	ScaleProcessCase
	// Skipped says why the check did not run (nothing was measured).
	Skipped string `json:"skipped,omitempty"`
	// Error, when set, is where the check failed: a miss.
	Error string `json:"error,omitempty"`
	// Started is how long the agents took to start and all see each
	// other up.
	Started time.Duration `json:"started_ns"`
	// Created and Refused count the creates answered 2xx and otherwise;
	// CreatesPerSecond is the rate before the cut.
	Created          int     `json:"created"`
	Refused          int     `json:"refused"`
	CreatesPerSecond float64 `json:"creates_per_second"`
	// From the heal: every agent sees every other up; every catalog holds
	// every resource of its scopes with the same operations; nothing is
	// pending anywhere (every owed create ran on its site's application).
	Reconnected time.Duration `json:"reconnected_ns"`
	Catalog     time.Duration `json:"catalog_ns"`
	Applied     time.Duration `json:"applied_ns"`
	// Applications is "ok" when every application holds exactly one item
	// per resource of its scopes, else what differs.
	Applications string `json:"applications,omitempty"`
}

// processConvergeWithin bounds each wait after the heal.
const processConvergeWithin = 3 * time.Minute

// runScaleProcess runs the process-level check. The cut is the emulated
// WAN's (package wan: user-space relays on 127.0.0.0/8), which needs no
// root, nftables or namespaces; the applications are in-process tinyApps
// (json-server would cost a Node.js process per site).
func runScaleProcess(ctx context.Context, env Env, pc ScaleProcessCase, seed uint64) *ScaleProcessFigures {
	f := &ScaleProcessFigures{ScaleProcessCase: pc}
	if env.Binary == "" {
		f.Skipped = "no cheops binary to run agents (run it through `cheops bench scale`)"
		return f
	}
	if pc.Agents < 2 {
		f.Skipped = "fewer than 2 agents"
		return f
	}
	env.Log.Info("scale: process-level check", "agents", pc.Agents, "resources", pc.Resources)
	start := time.Now()
	c, apps, err := startTinyCluster(ctx, env, pc.Agents, filepath.Join(env.Dir, "scale-agents"))
	defer func() {
		if c != nil {
			c.Close()
		}
		for _, a := range apps {
			a.close()
		}
	}()
	if err != nil {
		f.Error = err.Error()
		return f
	}
	f.Started = time.Since(start)
	names := c.Names()
	w := &workload{c: c, rng: rand.New(rand.NewPCG(seed, uint64(pc.Agents))), log: env.Log, resources: map[string][]string{}}

	before := pc.Resources / 2
	t0 := time.Now()
	acc, ref, err := scaleCreates(ctx, w, before, names, pc.CreateBudget)
	f.Created, f.Refused = f.Created+acc, f.Refused+ref
	if d := time.Since(t0); d > 0 {
		f.CreatesPerSecond = float64(acc) / d.Seconds()
	}
	if err != nil {
		f.Error = "creates before the cut: " + err.Error()
		return f
	}
	perm := w.rng.Perm(len(names))
	var side1, side2 []string
	for i, p := range perm {
		if i < len(names)/2 {
			side1 = append(side1, names[p])
		} else {
			side2 = append(side2, names[p])
		}
	}
	env.Log.Info("scale: cut", "side1", side1, "side2", side2)
	c.Net.Cut(side1, side2)
	if err := c.WaitStates(ctx, time.Minute, side1, side2, "down"); err != nil {
		f.Error = "cut: " + err.Error()
		return f
	}
	if err := c.WaitStates(ctx, time.Minute, side2, side1, "down"); err != nil {
		f.Error = "cut: " + err.Error()
		return f
	}
	var wg sync.WaitGroup
	var errs [2]error
	var accs, refs [2]int
	during := [2]int{(pc.Resources - before) / 2, pc.Resources - before - (pc.Resources-before)/2}
	for i, side := range [][]string{side1, side2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			accs[i], refs[i], errs[i] = scaleCreates(ctx, w, during[i], side, pc.CreateBudget)
		}()
	}
	wg.Wait()
	f.Created += accs[0] + accs[1]
	f.Refused += refs[0] + refs[1]
	for _, err := range errs {
		if err != nil {
			f.Error = "creates during the cut: " + err.Error()
			return f
		}
	}
	env.Log.Info("scale: heal", "created", f.Created)
	healed := time.Now()
	c.Net.Heal()
	reconnected := make(chan time.Duration, 1)
	go func() {
		defer close(reconnected)
		if c.WaitStates(ctx, processConvergeWithin, names, names, "up") == nil {
			reconnected <- time.Since(healed)
		}
	}()
	at, err := w.waitConverged(ctx, processConvergeWithin, false)
	if err != nil {
		f.Error = "catalogs after the heal: " + err.Error()
		return f
	}
	f.Catalog = at.Sub(healed)
	at, err = w.waitConverged(ctx, processConvergeWithin, true)
	if err != nil {
		f.Error = "applications after the heal: " + err.Error()
		return f
	}
	f.Applied = at.Sub(healed)
	f.Reconnected = <-reconnected
	f.Applications = "ok"
	if bad := checkTinyApps(apps, names, w.expected()); bad != "" {
		f.Applications = bad
	}
	return f
}

// startTinyCluster starts n agent processes on loopback, each in front of
// an in-process tinyApp (service "posts"), linked through an emulated
// WAN, and waits until every agent sees every other up. It builds the
// Cluster that StartCluster would, without json-server.
func startTinyCluster(ctx context.Context, env Env, n int, dir string) (*Cluster, []*tinyApp, error) {
	opt := ClusterOptions{Binary: env.Binary, Dir: dir, Log: env.Log}
	for i := range n {
		opt.Sites = append(opt.Sites, fmt.Sprintf("s%02d", i))
	}
	c := &Cluster{opt: opt, Net: wan.New(env.Log), http: &http.Client{Timeout: 30 * time.Second}}
	var apps []*tinyApp
	var trust []string
	for i, name := range opt.Sites {
		s := &Site{Name: name, ip: wan.SiteAddr(i), dir: filepath.Join(dir, name), logs: &lockedBuffer{}, exited: make(chan struct{})}
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return c, apps, fmt.Errorf("bench: %w", err)
		}
		_, id, err := node.LoadIdentity(s.dir)
		if err != nil {
			return c, apps, fmt.Errorf("bench: identity of %s: %w", name, err)
		}
		s.Peer = id.String()
		trust = append(trust, name+" "+s.Peer)
		c.Net.AddSite(name, s.ip)
		ports, err := freePorts(s.ip, 2)
		if err != nil {
			return c, apps, err
		}
		s.listen = net.JoinHostPort(s.ip, ports[0])
		s.API = "http://" + net.JoinHostPort(s.ip, ports[1])
		app, err := startTinyApp(s.ip)
		if err != nil {
			return c, apps, err
		}
		apps = append(apps, app)
		s.App = app.URL
		if s.relay, err = c.Net.Expose(name, wan.RelayAddr(i), s.listen); err != nil {
			return c, apps, err
		}
		c.Sites = append(c.Sites, s)
	}
	if err := os.WriteFile(filepath.Join(dir, "trust"), []byte(strings.Join(trust, "\n")+"\n"), 0o600); err != nil {
		return c, apps, fmt.Errorf("bench: %w", err)
	}
	// Four at a time: each start waits for its agent's API.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 4)
	for _, s := range c.Sites {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := c.StartAgent(ctx, s.Name); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return c, apps, firstErr
	}
	return c, apps, c.WaitStates(ctx, 2*time.Minute, c.Names(), c.Names(), "up")
}

// scaleCreates sends n creates with random scopes of 2–3 sites, each to
// a member of its scope among from (when none is, one site of from
// replaces the scope's first), from 16 clients, and records the created
// resources in w. It stops sending once budget (when not 0) is spent.
func scaleCreates(ctx context.Context, w *workload, n int, from []string, budget time.Duration) (accepted, refused int, err error) {
	stop := time.Now().Add(budget)
	all := w.c.Names()
	jobs := make(chan writeJob, n)
	w.mu.Lock()
	for i := range n {
		k := min(2+w.rng.IntN(2), len(all))
		var sites []string
		for _, p := range w.rng.Perm(len(all))[:k] {
			sites = append(sites, all[p])
		}
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
		jobs <- writeJob{site: local[w.rng.IntN(len(local))], method: http.MethodPost, path: "/svc/posts/items",
			scope: "{posts: " + strings.Join(sites, " & ") + "}", body: map[string]any{"title": fmt.Sprintf("r%d", i)}, sites: sites}
	}
	w.mu.Unlock()
	close(jobs)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if budget > 0 && time.Now().After(stop) {
					continue
				}
				code, hdr, body, e := w.c.Do(ctx, j.site, j.method, j.path, j.scope, j.body)
				mu.Lock()
				switch {
				case e != nil:
					if err == nil {
						err = fmt.Errorf("POST at %s: %w", j.site, e)
					}
				case code >= 200 && code < 300 && hdr.Get("X-Cheops-Resource") != "":
					accepted++
					w.mu.Lock()
					w.resources[hdr.Get("X-Cheops-Resource")] = j.sites
					w.mu.Unlock()
				default:
					refused++
					if err == nil {
						err = fmt.Errorf("POST at %s, scope %s: %d %s", j.site, j.scope, code, tail(string(body), 300))
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return accepted, refused, err
}

// checkTinyApps says which applications do not hold exactly one item per
// resource of their scopes ("" when all do).
func checkTinyApps(apps []*tinyApp, names []string, want map[string][]string) string {
	held := map[string]int{}
	for _, sites := range want {
		for _, s := range sites {
			held[s]++
		}
	}
	var bad []string
	for i, a := range apps {
		a.mu.Lock()
		n := len(a.items)
		a.mu.Unlock()
		if n != held[names[i]] {
			bad = append(bad, fmt.Sprintf("%s holds %d items, its scopes %d", names[i], n, held[names[i]]))
		}
	}
	if len(bad) > 0 {
		return strings.Join(bad, "; ")
	}
	return ""
}
