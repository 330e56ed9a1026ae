package bench

import (
	"log/slog"
	"runtime"
	"runtime/metrics"
	"time"
)

// schedWindow reads the Go scheduler's latency histogram (how long
// runnable goroutines waited to run) and gives its quantiles over the
// window since the previous read. At 100 in-process sites on two cores
// the write phase's queue is what cut the connections: a goroutine
// waited up to tens of seconds to run, longer than yamux's 10 s
// keepalive allows for a ping's answer (docs/scaling.md).
type schedWindow struct {
	prev []uint64
}

// read returns the 99th percentile and the largest latency (the upper
// bounds of their histogram buckets) since the last read, and how many
// goroutines are runnable now.
func (w *schedWindow) read() (p99, most time.Duration, runnable uint64) {
	sample := []metrics.Sample{{Name: "/sched/latencies:seconds"}, {Name: "/sched/goroutines/runnable:goroutines"}}
	metrics.Read(sample)
	h := sample[0].Value.Float64Histogram()
	if sample[1].Value.Kind() == metrics.KindUint64 {
		runnable = sample[1].Value.Uint64()
	}
	counts := make([]uint64, len(h.Counts))
	var total uint64
	for i, c := range h.Counts {
		counts[i] = c
		if i < len(w.prev) {
			counts[i] -= w.prev[i]
		}
		total += counts[i]
	}
	w.prev = h.Counts
	bound := func(i int) time.Duration {
		b := h.Buckets[i+1]
		if b > 1e6 { // +Inf: the last bucket
			b = h.Buckets[i]
		}
		return time.Duration(b * float64(time.Second))
	}
	var acc uint64
	p99set := false
	for i, c := range counts {
		acc += c
		if !p99set && total > 0 && float64(acc) >= 0.99*float64(total) {
			p99, p99set = bound(i), true
		}
		if c > 0 {
			most = bound(i)
		}
	}
	return p99, most, runnable
}

// watchLoad logs, every period until stop is called, the pairs of sites
// connected, the connections closed since the start, the goroutines and
// the scheduler's latency over the period: what tells an overloaded
// process (connections cut by keepalives that could not run in time)
// from a slow catalog.
func (ss *scaleSites) watchLoad(log *slog.Logger, what string, period time.Duration) (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	closed0 := ss.closedConns()
	start := time.Now()
	var w schedWindow
	w.read()
	go func() {
		defer close(finished)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			peers, conns, fewest, _ := ss.connections()
			p99, most, runnable := w.read()
			log.Info("scale: load", "during", what, "elapsed", time.Since(start).Round(time.Second),
				"connected_pairs", peers, "connections", conns, "fewest_peers", fewest,
				"connections_closed", ss.closedConns()-closed0,
				"goroutines", runtime.NumGoroutine(), "runnable", runnable, "awake_replicas", ss.awake(), "awake_peak_max", ss.awakePeak(),
				"sched_latency_p99", p99.Round(time.Millisecond), "sched_latency_max", most.Round(time.Millisecond))
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// awakePeak is the most replicas one site has had open at once.
func (ss *scaleSites) awakePeak() int {
	n := 0
	for _, s := range ss.sites {
		n = max(n, s.m.AwakePeak())
	}
	return n
}

// closedConns counts the connections every site's host saw close.
func (ss *scaleSites) closedConns() int64 {
	var n int64
	for _, s := range ss.sites {
		n += s.closed.Load()
	}
	return n
}
