package node

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cheops/scope"
)

// collector exposes membership at scrape time, from the same state as
// Sites, so the metrics never disagree with GET /v1/sites and a site that
// changes state leaves no stale series behind.
type collector struct{ n *Node }

var (
	descSites = prometheus.NewDesc("cheops_sites",
		"Known sites (this one included) by membership state.", []string{"state"}, nil)
	descSiteState = prometheus.NewDesc("cheops_site_state",
		"1 for the membership state each site is in.", []string{"site", "state"}, nil)
	descSiteRTT = prometheus.NewDesc("cheops_site_rtt_seconds",
		"Smoothed round-trip time of probes to each site (EWMA).", []string{"site"}, nil)
	descLastSeen = prometheus.NewDesc("cheops_site_last_seen_timestamp_seconds",
		"When each site last answered a probe (Unix time).", []string{"site"}, nil)
	descConflicts = prometheus.NewDesc("cheops_membership_conflicts",
		"Peers whose claim on a site name was refused (the name is bound to another peer, or the peer to another name).", []string{"site"}, nil)
	descRefusedClaims = prometheus.NewDesc("cheops_membership_refused_claims_total",
		"Membership records refused because they claimed a site name bound to another peer (or came from a peer bound to another name).", []string{"site"}, nil)
	descProbes = prometheus.NewDesc("cheops_membership_probes_total",
		"Probes this site started (a dial if needed, then a ping).", nil, nil)
	descHealth = prometheus.NewDesc("cheops_membership_health_multiplier",
		"This site's local health multiplier: 1 when it keeps time, up to 8 when it is starved of CPU (its probe rounds, probe timeouts and redials are stretched by it).", nil, nil)
	descProbeFailures = prometheus.NewDesc("cheops_membership_probe_failures_total",
		"Probes that got no answer, by whether they counted as a miss against the peer (counted) or not because this site was starved while they ran (forgiven).", []string{"verdict"}, nil)
	descRecordAsks = prometheus.NewDesc("cheops_membership_record_asks_total",
		"Record exchanges this site started after a probe answered by a peer whose record had not arrived (its push was lost).", nil, nil)
	descRefused = prometheus.NewDesc("cheops_refused_connections_total",
		"Connections refused because the peer is not trusted.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSites, descSiteState, descSiteRTT, descLastSeen, descConflicts, descRefusedClaims, descRefused, descProbes, descHealth, descProbeFailures, descRecordAsks} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	count := map[scope.State]int{}
	for _, s := range c.n.Sites() {
		count[s.State]++
		ch <- prometheus.MustNewConstMetric(descSiteState, prometheus.GaugeValue, 1, s.Site, s.State.String())
		if !s.Self && s.RTT > 0 {
			ch <- prometheus.MustNewConstMetric(descSiteRTT, prometheus.GaugeValue, s.RTT.Seconds(), s.Site)
		}
		if !s.LastSeen.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLastSeen, prometheus.GaugeValue, float64(s.LastSeen.UnixMilli())/1e3, s.Site)
		}
	}
	claimants := map[string]int{}
	for _, cf := range c.n.Conflicts() {
		claimants[cf.Site]++
	}
	for site, k := range claimants {
		ch <- prometheus.MustNewConstMetric(descConflicts, prometheus.GaugeValue, float64(k), site)
	}
	for site, k := range c.n.RefusedClaims() {
		ch <- prometheus.MustNewConstMetric(descRefusedClaims, prometheus.CounterValue, float64(k), site)
	}
	for _, st := range []scope.State{scope.Up, scope.Suspect, scope.Down, scope.Unknown} {
		ch <- prometheus.MustNewConstMetric(descSites, prometheus.GaugeValue, float64(count[st]), st.String())
	}
	refused := 0
	for _, k := range c.n.Refused() {
		refused += k
	}
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(refused))
	ch <- prometheus.MustNewConstMetric(descProbes, prometheus.CounterValue, float64(c.n.probes.Load()))
	ch <- prometheus.MustNewConstMetric(descHealth, prometheus.GaugeValue, float64(c.n.HealthMultiplier()))
	ch <- prometheus.MustNewConstMetric(descProbeFailures, prometheus.CounterValue, float64(c.n.stats.misses.Load()), "counted")
	ch <- prometheus.MustNewConstMetric(descProbeFailures, prometheus.CounterValue, float64(c.n.stats.forgiven.Load()), "forgiven")
	ch <- prometheus.MustNewConstMetric(descRecordAsks, prometheus.CounterValue, float64(c.n.stats.recordAsks.Load()))
}

// probeStats counts the outcomes of this node's probes, for the metrics
// and for tests that must say why a cluster did not form.
type probeStats struct {
	failed   atomic.Int64 // probes that got no answer
	timedOut atomic.Int64 // of which ran out of time
	forgiven atomic.Int64 // failures not counted as misses (this node was starved)
	misses   atomic.Int64 // failures counted as misses
	redials  atomic.Int64 // dials of a site reached before
	// lostRetries counts the early rounds asked for because a site not up
	// lost its connection (lostConnectionLocked).
	lostRetries atomic.Int64
	downs       atomic.Int64 // sites this node declared down
	// recordAsks counts the record exchanges started after a probe of a
	// peer whose record had not arrived (askRecordLocked).
	recordAsks atomic.Int64
	heardSelf  atomic.Int64 // probe answers in which a peer suspected this site
	dialFails  atomic.Int64 // of the failures, dials (first contacts among them: firstFails)
	firstFails atomic.Int64
	skipped    atomic.Int64 // of the failures, probes not tried (redial backoff)
	openFails  atomic.Int64 // of the failures, streams that did not open
	// probeStreams counts the streams opened for probes (a probe on a
	// kept stream opens none).
	probeStreams atomic.Int64
	slowest      atomic.Int64 // the longest RTT of an answered probe, in nanoseconds
	lateTicks    atomic.Int64 // probe loop ticks later than starvedAfter
	loopWakes    atomic.Int64 // times the probe loop ran (see probeLoop)
	// queuedTicks counts the ticks that found the scheduler's latency
	// above starvedAfter (see queued).
	queuedTicks atomic.Int64
	lateMax     atomic.Int64 // the latest tick's lateness, in nanoseconds
	// multiplier is the latest health multiplier; peak the highest.
	multiplier, peak atomic.Int64
}

// String lists the counts, for test logs.
func (s *probeStats) String() string {
	return fmt.Sprintf("failed %d (timed out %d; dials %d, first %d; skipped %d; streams %d), probe streams opened %d, slowest answer %v, forgiven %d, misses %d, redials %d, downs %d, suspected by others %d, records asked %d, late ticks %d (max %v), queued ticks %d, health multiplier %d (peak %d)",
		s.failed.Load(), s.timedOut.Load(), s.dialFails.Load(), s.firstFails.Load(), s.skipped.Load(), s.openFails.Load(), s.probeStreams.Load(), time.Duration(s.slowest.Load()), s.forgiven.Load(), s.misses.Load(), s.redials.Load(), s.downs.Load(), s.heardSelf.Load(), s.recordAsks.Load(), s.lateTicks.Load(), time.Duration(s.lateMax.Load()), s.queuedTicks.Load(), max(s.multiplier.Load(), 1), max(s.peak.Load(), 1))
}
