package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/scope"
)

// many is a cluster of in-process sites on loopback TCP, s000 to s<n-1>,
// each trusting all the others and bootstrapping from s000, as the scale
// benchmarks run them.
type many struct {
	tb    testing.TB
	names []string
	nodes []*Node
	bw    []*metrics.BandwidthCounter
	// started is when the first node started.
	started time.Time
}

// startMany starts n sites with DefaultConfig changed by configure (nil:
// the defaults, on loopback TCP). The sites are closed at the end of the
// test.
func startMany(tb testing.TB, n int, configure func(*Config)) *many {
	tb.Helper()
	m := &many{tb: tb}
	dirs := make([]string, n)
	var trust []peer.ID
	root := tb.TempDir()
	for i := range n {
		m.names = append(m.names, fmt.Sprintf("s%03d", i))
		dirs[i] = filepath.Join(root, m.names[i])
		_, id, err := LoadIdentity(dirs[i])
		if err != nil {
			tb.Fatal(err)
		}
		trust = append(trust, id)
	}
	tb.Cleanup(m.closeAll)
	m.started = time.Now()
	var boot []string
	for i, name := range m.names {
		c := DefaultConfig()
		c.Site, c.DataDir, c.Trust, c.Peers = name, dirs[i], trust, boot
		c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		c.Logger = testLogger
		if configure != nil {
			configure(&c)
		}
		bw := metrics.NewBandwidthCounter()
		c.Bandwidth = bw
		nd, err := New(context.Background(), c)
		if err != nil {
			tb.Fatalf("start %s: %v", name, err)
		}
		m.nodes = append(m.nodes, nd)
		m.bw = append(m.bw, bw)
		if boot == nil {
			boot = nd.Addrs()[:1]
		}
	}
	return m
}

// closeAll closes every node, several at a time.
func (m *many) closeAll() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, nd := range m.nodes {
		if nd == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			nd.Close()
		}()
	}
	wg.Wait()
}

// notUp counts the ordered pairs (observer, subject) of running nodes in
// which the observer does not see the subject up, and returns one of them
// as an example.
func (m *many) notUp() (int, string) {
	count, example := 0, ""
	for i, o := range m.nodes {
		if o == nil {
			continue
		}
		// Sites, not View: a view copies every site's RTTs (N² entries).
		states := map[string]scope.State{}
		for _, st := range o.Sites() {
			states[st.Site] = st.State
		}
		for j, s := range m.names {
			if i == j || m.nodes[j] == nil {
				continue
			}
			if st := states[s]; st != scope.Up {
				count++
				if example == "" {
					example = fmt.Sprintf("%s sees %s %v", m.names[i], s, st)
				}
			}
		}
	}
	return count, example
}

// waitFormed polls until every node sees every other up, and fails the
// test when the count of pairs not up has not fallen for stall, or after
// limit. The stall bound, not a fixed deadline, is what a test can ask of
// a machine whose load it does not control: a starved process forms the
// cluster more slowly (awareness.go), and must keep forming it.
func (m *many) waitFormed(stall, limit time.Duration) time.Duration {
	m.tb.Helper()
	start := time.Now()
	best, progressed := -1, start
	for {
		k, example := m.notUp()
		if k == 0 {
			return time.Since(m.started)
		}
		if best < 0 || k < best {
			best, progressed = k, time.Now()
		}
		if time.Since(progressed) > stall || time.Since(start) > limit {
			m.logStats()
			m.tb.Fatalf("%d sites: %d pairs not up %v after the first start, none more for %v (e.g. %s; load average %s)",
				len(m.nodes), k, time.Since(m.started).Round(time.Millisecond), time.Since(progressed).Round(time.Second), example, loadAverage())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logStats logs each node's probe counts.
func (m *many) logStats() {
	for i, nd := range m.nodes {
		if nd != nil {
			m.tb.Logf("%s: %d probes: %v", m.names[i], nd.probes.Load(), &nd.stats)
		}
	}
}

// counters sums the probes started and the bytes sent by every node.
func (m *many) counters() (probes, sent int64) {
	for i, nd := range m.nodes {
		if nd == nil {
			continue
		}
		probes += nd.probes.Load()
		sent += m.bw[i].GetBandwidthTotals().TotalOut
	}
	return probes, sent
}

// logProtocols logs the bytes sent per site by protocol since the start.
func (m *many) logProtocols(tb testing.TB) {
	total := map[string]int64{}
	for _, bw := range m.bw {
		for p, st := range bw.GetBandwidthByProtocol() {
			total[string(p)] += st.TotalOut
		}
	}
	for p, b := range total {
		tb.Logf("%d sites: %s: %d B sent per site", len(m.nodes), p, b/int64(len(m.nodes)))
	}
}

// loadAverage is the machine's load average (/proc/loadavg), which the
// benchmark's figures depend on: in-process sites share the machine.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// processCPU is the CPU time (user and system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFormation starts N in-process sites on loopback (default
// probing, every site bootstrapping from the first) and reports the time
// from the first start until every site sees every other up
// (formed-s), the bytes each site sent until then, then, five probe
// intervals later, the probes and bytes each site sends per second and
// the cores the whole process uses, over ten intervals, and the pairs
// not up at the end (0 unless some site flapped). Run it once per size:
//
//	go test -run '^$' -bench Formation -benchtime 1x ./node/
func BenchmarkFormation(b *testing.B) {
	for _, size := range []int{20, 50, 100} {
		b.Run(fmt.Sprintf("sites=%d", size), func(b *testing.B) {
			var formed, perSiteProbes, perSiteBytes, formBytes float64
			var notUp int
			var cpuShare float64
			for b.Loop() {
				m := startMany(b, size, nil)
				interval := m.nodes[0].cfg.ProbeInterval
				formed += m.waitFormed(3*time.Minute, 3*time.Minute).Seconds()
				_, sentAtForm := m.counters()
				formBytes += float64(sentAtForm) / float64(size)
				// Fixed windows to let the RTTs of the start settle and
				// to count over: no condition to wait for.
				time.Sleep(5 * interval)
				probes0, sent0 := m.counters()
				cpu0 := processCPU()
				t0 := time.Now()
				time.Sleep(10 * interval)
				probes1, sent1 := m.counters()
				secs := time.Since(t0).Seconds()
				cpuShare += (processCPU() - cpu0).Seconds() / secs
				perSiteProbes += float64(probes1-probes0) / float64(size) / secs
				perSiteBytes += float64(sent1-sent0) / float64(size) / secs
				b.Logf("%d sites: load average at the end: %s", size, loadAverage())
				k, _ := m.notUp()
				notUp += k
				m.logProtocols(b)
				m.closeAll()
			}
			n := float64(b.N)
			b.ReportMetric(formed/n, "formed-s")
			b.ReportMetric(perSiteProbes/n, "probes/site/s")
			b.ReportMetric(perSiteBytes/n, "B/site/s")
			b.ReportMetric(formBytes/n, "formation-B/site")
			b.ReportMetric(float64(notUp)/n, "pairs-not-up-after")
			b.ReportMetric(cpuShare/n, "steady-cores")
		})
	}
}

// manyConfig probes four times a second: fast enough for tests, light
// enough for forty sites under the race detector on two cores.
func manyConfig(c *Config) {
	c.ProbeInterval, c.ProbeTimeout = 250*time.Millisecond, time.Second
	c.AnnounceInterval = 500 * time.Millisecond
	c.MaxRedialBackoff = 400 * time.Millisecond
}

// Forty sites, each bootstrapping from the first: every site sees every
// other up within a bound; then each probes about ProbeFanout sites per
// round, not 39; then a site that stops is down at every other within
// DownBound. Under the race detector, 16 sites probing 3 per round: it
// takes a minute to set up the 276 connections of 24 sites.
func TestManySites(t *testing.T) {
	sites, fanout, margin := 40, 8, 3*time.Second
	if raceEnabled {
		sites, fanout, margin = 16, 3, 6*time.Second
	}
	m := startMany(t, sites, func(c *Config) {
		manyConfig(c)
		c.ProbeFanout = fanout
	})
	cfg := m.nodes[0].Config()
	formed := m.waitFormed(60*time.Second, 5*time.Minute)
	t.Logf("%d sites all up everywhere %v after the first start (load average %s)", sites, formed.Round(time.Millisecond), loadAverage())

	// Probes per site per round, over twenty rounds.
	before := make([]int64, sites)
	for i, nd := range m.nodes {
		before[i] = nd.probes.Load()
	}
	t0 := time.Now()
	time.Sleep(20 * cfg.ProbeInterval) // a window to count over
	rounds := time.Since(t0).Seconds() / cfg.ProbeInterval.Seconds()
	var total, worst float64
	for i, nd := range m.nodes {
		per := float64(nd.probes.Load()-before[i]) / rounds
		total += per
		worst = max(worst, per)
	}
	avg := total / float64(sites)
	t.Logf("probes per site per round: %.2f on average, %.2f at most (fanout %d, %d peers)", avg, worst, cfg.ProbeFanout, sites-1)
	if avg > float64(cfg.ProbeFanout)+0.5 || worst > float64(cfg.ProbeFanout)+2 {
		t.Errorf("probes per site per round: %.2f on average, %.2f at most; want about ProbeFanout (%d)", avg, worst, cfg.ProbeFanout)
	}

	// A site stops: every other sees it down within DownBound.
	victim := m.names[sites/2]
	m.nodes[sites/2].Close()
	m.nodes[sites/2] = nil
	stopped := time.Now()
	// A starved site stretches its probing by its health multiplier
	// (awareness.go), and DownBound with it: the bound takes the highest
	// multiplier seen while waiting (1 on an idle machine). The margin
	// absorbs a busy machine, and -race.
	mult := 1
	for {
		notDown := 0
		for _, nd := range m.nodes {
			if nd == nil {
				continue
			}
			mult = max(mult, nd.HealthMultiplier())
			if nd.View().Sites[victim].State != scope.Down {
				notDown++
			}
		}
		if notDown == 0 {
			break
		}
		if bound := time.Duration(mult)*cfg.DownBound() + margin; time.Since(stopped) > bound {
			m.logStats()
			t.Fatalf("%d sites do not see the stopped %s down %v after it stopped (DownBound %v, health multiplier up to %d)", notDown, victim, bound, cfg.DownBound(), mult)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("stopped %s down at all %d others after %v (DownBound %v, health multiplier up to %d)", victim, sites-1, time.Since(stopped).Round(time.Millisecond), cfg.DownBound(), mult)
	m.logStats()
}
