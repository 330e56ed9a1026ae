package e2e

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cheops/agent"
	"cheops/bench"
	"cheops/forward"
	"cheops/internal/testkit"
	"cheops/scope"
)

// measure runs fn b.N times and reports the p50 and p99 latency.
func measure(b *testing.B, fn func()) {
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		fn()
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(0.5), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}

func send(b *testing.B, method, url, scope string, body []byte, want int) {
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if scope != "" {
		req.Header.Set(forward.HeaderScope, scope)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		b.Fatalf("%s %s: %d", method, url, resp.StatusCode)
	}
}

// BenchmarkForwarding compares reading one post straight from json-server
// with reading it through the local agent and through a remote agent over
// libp2p, and measures replicated creates on 2 and 3 sites.
func BenchmarkForwarding(b *testing.B) {
	c := newCluster(b, "paris", "berlin", "rome")
	for _, s := range []string{"paris", "berlin", "rome"} {
		send(b, "POST", c.sites[s].app.url+"/posts", "", []byte(`{"title":"seed"}`), 201)
	}
	paris := c.sites["paris"].agent.URL()
	b.Run("direct", func(b *testing.B) {
		measure(b, func() { send(b, "GET", c.sites["paris"].app.url+"/posts/1", "", nil, 200) })
	})
	b.Run("local-agent", func(b *testing.B) {
		measure(b, func() { send(b, "GET", paris+"/svc/posts/posts/1", "", nil, 200) })
	})
	b.Run("remote-agent", func(b *testing.B) {
		measure(b, func() { send(b, "GET", paris+"/svc/posts/posts/1", "{posts: berlin}", nil, 200) })
	})
	body := []byte(`{"title":"bench"}`)
	b.Run("create-1-site", func(b *testing.B) {
		measure(b, func() { send(b, "POST", paris+"/svc/posts/posts", "{posts: paris}", body, 201) })
	})
	b.Run("create-2-sites", func(b *testing.B) {
		measure(b, func() { send(b, "POST", paris+"/svc/posts/posts", "{posts: paris & berlin}", body, 201) })
	})
	b.Run("create-3-sites", func(b *testing.B) {
		measure(b, func() { send(b, "POST", paris+"/svc/posts/posts", "{posts: paris & berlin & rome}", body, 201) })
	})
}

// BenchmarkCatchUp measures the time from a site's return to its last
// owed operation executed, with 100 and 1,000 creates made while it was
// down, and beside it (jsonserver-ms) json-server's own time for as many
// creates sent straight to it from 16 clients, the runner's workers. The
// timeline of the catch-up, from the return: the agent started
// (started-ms), its catalog held every resource (catalog-synced-ms), the
// first owed create ran (first-exec-ms, from the runner's log), the last
// ran (executed-ms, read from the executor's metrics every 250 ms), the
// outcomes were recorded (catchup-ms); max-running is the most
// operations seen running at once. CHEOPS_CATCHUP_TIMELINE=1 prints the
// restart's whole timeline (timelineEnv).
func BenchmarkCatchUp(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("pending=%d", n), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				tl := newTimeline("rome")
				c := newClusterTuned(b, nil, tl.tune, "paris", "rome")
				c.stop("rome")
				c.waitState(scope.Down, []string{"paris"}, []string{"rome"})
				for i := range n {
					send(b, "POST", c.sites["paris"].agent.URL()+"/svc/posts/posts", "{posts: paris & rome}", []byte(fmt.Sprintf(`{"n": %d}`, i)), 201)
				}
				// json-server's own time for the same creates, from as
				// many clients as the runner has workers, on a fresh
				// database, in the same minutes: the floor catch-up is
				// judged against (it varied from 1.1 to 2.4 s per 1,000
				// on this machine at different hours).
				floor, floorCPU := jsonServerFloor(b, n, 16)
				endHeap := heapCatchUp(b)
				appCPU, agentsCPU := cpuOf(b, c.sites["rome"].app.pid), bench.SelfCPU()
				stopProfile := profileCatchUp(b)
				b.StartTimer()
				back := time.Now()
				tl.begin(back)
				// rome's goroutines carry the label site=rome in the
				// profile (those of paris and of this loop none).
				pprof.Do(context.Background(), pprof.Labels("site", "rome"), func(context.Context) { c.start("rome") })
				started := time.Since(back)
				deadline := time.Now().Add(5 * time.Minute)
				var synced, first, executed time.Duration
				var running, applied, run float64
				polls := 0
				for {
					// Cheap questions first: a full List every 10 ms would
					// take CPU from the catch-up it measures (and count in
					// agents-cpu). How many resources are still owed once
					// every resource is held (the end of the catch-up, to
					// the poll; a count, not the sorted list: sorting it
					// every poll cost 30 µs per create); the executor's
					// metrics every 250 ms (a gather reads every collector
					// of the agent's registry, the process collector's
					// /proc included: every 100 ms it cost 55 µs per create).
					// Resources are never removed here: once rome holds
					// all n, Len (a pass over the view's entries: 50 µs
					// per create when asked every poll) is not asked again.
					a := c.sites["rome"].agent
					cat := a.Catalog()
					held, owing := n, -1
					if synced == 0 {
						held = cat.Len()
					}
					if held == n {
						owing = cat.OwingCount()
					}
					if polls++; polls%25 == 0 || owing == 0 {
						applied, run = executorState(b, a.Node().Registry())
						running = max(running, run)
					}
					if held == n && synced == 0 {
						synced = time.Since(back)
					}
					if applied >= float64(n) && executed == 0 {
						executed = time.Since(back)
					}
					if held == n && owing == 0 {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("rome holds %d of %d resources and still owes on %d after 5 minutes", held, n, owing)
					}
					time.Sleep(10 * time.Millisecond)
				}
				catchUp := time.Since(back)
				stopProfile()
				first = tl.firstExec()
				tl.end()
				// CPU per owed create, steadier than wall time on a
				// shared machine: rome's json-server against the same
				// creates sent straight to a fresh one, and this process
				// (both agents and the polling above).
				appCPU, agentsCPU = cpuOf(b, c.sites["rome"].app.pid)-appCPU, bench.SelfCPU()-agentsCPU
				b.ReportMetric(float64(appCPU)/float64(time.Microsecond)/float64(n), "app-cpu-µs/create")
				b.ReportMetric(float64(floorCPU)/float64(time.Microsecond)/float64(n), "floor-app-cpu-µs/create")
				b.ReportMetric(float64(agentsCPU)/float64(time.Microsecond)/float64(n), "agents-cpu-µs/create")
				b.ReportMetric(float64(catchUp)/float64(time.Millisecond), "catchup-ms")
				b.ReportMetric(float64(started)/float64(time.Millisecond), "started-ms")
				b.ReportMetric(float64(first)/float64(time.Millisecond), "first-exec-ms")
				b.ReportMetric(float64(executed)/float64(time.Millisecond), "executed-ms")
				b.ReportMetric(running, "max-running")
				b.ReportMetric(float64(synced)/float64(time.Millisecond), "catalog-synced-ms")
				b.ReportMetric(float64(floor)/float64(time.Millisecond), "jsonserver-ms")
				b.StopTimer()
				endHeap()
				if got := len(c.sites["rome"].app.items(b, "posts")); got != n {
					b.Fatalf("rome's application holds %d posts, want %d", got, n)
				}
				// What the two agents burn per second with nothing to do
				// (a second, once the catch-up's last merges settled):
				// agents-cpu counts it for every second a catch-up lasts,
				// so a slower json-server raises agents-cpu too.
				time.Sleep(500 * time.Millisecond)
				idle, idleFrom := bench.SelfCPU(), time.Now()
				time.Sleep(time.Second)
				b.ReportMetric(float64(bench.SelfCPU()-idle)/float64(time.Millisecond)/time.Since(idleFrom).Seconds(), "idle-agents-cpu-ms/s")
				b.StartTimer()
			}
		})
	}
}

// timelineEnv, set (to anything), makes BenchmarkCatchUp print the
// timeline of the returning site's restart: when each message its
// loggers emit (debug included) came first and last, from the restart,
// and how many times. Off by default: debug records cost CPU.
const timelineEnv = "CHEOPS_CATCHUP_TIMELINE"

// timeline records when one site's log messages came, from a start, and
// always when its first owed operation was executed (the runner's debug
// message: its loggers are asked for debug records until it came, and
// no longer); the executor's metrics, read every 250 ms, placed it
// within 250 ms.
type timeline struct {
	site  string
	full  bool
	first atomic.Int64 // ns from the start to the first owed operation executed (0: none yet)
	mu    sync.Mutex
	from  time.Time // zero: not recording
	seen  map[string]*timelineStep
}

// timelineStep is one message (its first words) in a timeline.
type timelineStep struct {
	msg         string
	first, last time.Duration
	n           int
}

// firstExecuted is the message the runner logs (debug) for each owed
// operation it ran.
const firstExecuted = "owed operation executed"

func newTimeline(site string) *timeline {
	return &timeline{site: site, full: os.Getenv(timelineEnv) != "", seen: map[string]*timelineStep{}}
}

// tune gives the site's agent a logger that feeds the timeline.
func (tl *timeline) tune(cfg *agent.Config) {
	if cfg.Node.Site == tl.site {
		cfg.Logger = slog.New(&timelineHandler{next: cfg.Logger.Handler(), tl: tl})
	}
}

// begin starts recording from t.
func (tl *timeline) begin(t time.Time) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.from = t
	tl.first.Store(0)
	clear(tl.seen)
}

// firstExec is when the first owed operation was executed, from the
// start (0: none was).
func (tl *timeline) firstExec() time.Duration { return time.Duration(tl.first.Load()) }

// end stops recording and prints the timeline when asked for.
func (tl *timeline) end() {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.from = time.Time{}
	if !tl.full {
		return
	}
	steps := slices.SortedFunc(maps.Values(tl.seen), func(a, b *timelineStep) int { return cmp.Compare(a.first, b.first) })
	var out strings.Builder
	fmt.Fprintf(&out, "timeline of %s's restart (ms from it: first, last, count):\n", tl.site)
	for _, s := range steps {
		fmt.Fprintf(&out, "%8.1f %8.1f %6d  %s\n", ms(s.first), ms(s.last), s.n, s.msg)
	}
	// Printed, not logged: a benchmark's log is cut to a few lines.
	fmt.Fprint(os.Stderr, out.String())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (tl *timeline) record(at time.Time, msg string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if tl.from.IsZero() {
		return
	}
	d := at.Sub(tl.from)
	if msg == firstExecuted && tl.first.Load() == 0 {
		tl.first.Store(int64(d))
	}
	if !tl.full {
		return
	}
	// The message's first words, up to a value (a CID, a number, a
	// list): go-ds-crdt's messages carry theirs in the text.
	var words []string
	for _, w := range strings.Fields(msg) {
		if len(words) == 5 || strings.HasPrefix(w, "bafy") || strings.ContainsAny(w, "0123456789[(") {
			break
		}
		words = append(words, strings.TrimSuffix(w, ":"))
		if strings.HasSuffix(w, ":") {
			break
		}
	}
	msg = strings.Join(words, " ")
	s := tl.seen[msg]
	if s == nil {
		s = &timelineStep{msg: msg, first: d}
		tl.seen[msg] = s
	}
	s.last, s.n = d, s.n+1
}

// timelineHandler passes records on to next and feeds the timeline: with
// every record of the site's loggers for a full timeline, else with the
// runner's debug records until the first owed operation was executed.
type timelineHandler struct {
	next   slog.Handler
	tl     *timeline
	runner bool // a logger of the runner (component catchup)
}

func (h *timelineHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.tl.full || h.runner && h.tl.first.Load() == 0 || h.next.Enabled(ctx, l)
}

func (h *timelineHandler) Handle(ctx context.Context, r slog.Record) error {
	h.tl.record(r.Time, r.Message)
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *timelineHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	runner := h.runner
	for _, a := range attrs {
		runner = runner || a.Key == "component" && a.Value.String() == "catchup"
	}
	return &timelineHandler{next: h.next.WithAttrs(attrs), tl: h.tl, runner: runner}
}

func (h *timelineHandler) WithGroup(name string) slog.Handler {
	return &timelineHandler{next: h.next.WithGroup(name), tl: h.tl, runner: h.runner}
}

// executorState reads, from an agent's metrics, how many operations its
// executor applied and how many run now.
func executorState(b *testing.B, reg prometheus.Gatherer) (applied, running float64) {
	b.Helper()
	fams, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range fams {
		switch f.GetName() {
		case "cheops_replica_operations_total":
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "outcome" && l.GetValue() == "applied" {
						applied += m.GetCounter().GetValue()
					}
				}
			}
		case "cheops_replica_running":
			for _, m := range f.GetMetric() {
				running += m.GetGauge().GetValue()
			}
		}
	}
	return applied, running
}

// jsonServerFloor sends n creates straight to a fresh json-server (with
// the collections of the cluster's) from the given number of clients,
// each keeping its connection as the forwarder's pool does, and returns
// how long they took and the CPU time the server used.
func jsonServerFloor(b *testing.B, n, clients int) (time.Duration, time.Duration) {
	b.Helper()
	base, pid := testkit.StartJSONServerProcess(b, b.TempDir(), "posts", "comments")
	url := base + "/posts"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	defer client.CloseIdleConnections()
	cpu := cpuOf(b, pid)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				resp, err := client.Post(url, "application/json", bytes.NewReader([]byte(fmt.Sprintf(`{"n": %d}`, i))))
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					b.Errorf("json-server answered a create %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if b.Failed() {
		b.FailNow()
	}
	return took, cpuOf(b, pid) - cpu
}

// profileCatchUp writes a CPU profile of the catch-up alone (both agents
// run in this process) to the file CHEOPS_CATCHUP_CPUPROFILE names, when
// it names one, with the repetition's number appended from the second on
// (go tool pprof merges them); the returned function ends it.
func profileCatchUp(b *testing.B) (stop func()) {
	b.Helper()
	path := os.Getenv("CHEOPS_CATCHUP_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	if catchUpProfiles++; catchUpProfiles > 1 {
		path += "." + strconv.Itoa(catchUpProfiles)
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatalf("profile the catch-up (not with -cpuprofile): %v", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// heapCatchUp writes, when CHEOPS_CATCHUP_MEMPROFILE names a file, the
// heap profile (allocations since the process started) at the start of a
// catch-up to that name with ".start" appended and the repetition's
// number, and the returned function writes it at the end, without
// ".start": go tool pprof -sample_index=alloc_space -diff_base START END
// shows what the catch-up allocated. Each profile is taken after a
// collection (runtime.GC), outside the measured window.
func heapCatchUp(b *testing.B) (end func()) {
	b.Helper()
	path := os.Getenv("CHEOPS_CATCHUP_MEMPROFILE")
	if path == "" {
		return func() {}
	}
	catchUpHeaps++
	path += "." + strconv.Itoa(catchUpHeaps)
	write := func(name string) {
		runtime.GC()
		f, err := os.Create(name)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
	}
	write(path + ".start")
	return func() { write(path) }
}

// catchUpHeaps counts the catch-up heap profiles written by this process.
var catchUpHeaps int

// catchUpProfiles counts the catch-up profiles written by this process.
var catchUpProfiles int

// cpuOf is the CPU time process pid has used so far.
func cpuOf(b *testing.B, pid int) time.Duration {
	b.Helper()
	d, ok := bench.ProcessCPU(pid)
	if !ok {
		b.Fatalf("no CPU time for process %d in /proc", pid)
	}
	return d
}
