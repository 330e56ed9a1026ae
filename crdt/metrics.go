package crdt

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the package's Prometheus metrics, all named cheops_crdt_*.
// Per-site series are labelled with the peer's site name ("unknown" for
// a peer of no joined group).
type metrics struct {
	refused                prometheus.Counter
	malformed              prometheus.Counter
	repairs                prometheus.Counter
	repairFailures         prometheus.Counter
	fetches                prometheus.Counter
	fetchRetries           prometheus.Counter
	fetching               prometheus.Gauge
	digestMismatches       prometheus.Counter
	lagRepairs             prometheus.Counter
	blocksFetched          prometheus.Counter
	duplicateBlocks        prometheus.Counter
	blocksSent             prometheus.Counter
	headsPushed            prometheus.Counter
	broadcasts             prometheus.Counter
	linkDrops              *prometheus.CounterVec
	queueDrops             prometheus.Counter
	linkResends            prometheus.Counter
	pushesCoalesced        prometheus.Counter
	wakes                  *prometheus.CounterVec
	sleeps                 prometheus.Counter
	evictions, deferred    prometheus.Counter
	rewalks                prometheus.Counter
	seedWaits              prometheus.Counter
	redundantHeads         prometheus.Counter
	unmergedHeads          prometheus.Counter
	commits                prometheus.Counter
	committedWrites        prometheus.Counter
	digestRounds           *prometheus.CounterVec
	digestDeferred         prometheus.Counter
	digestRoundsDeferred   prometheus.Counter
	digestRoundsAnswered   prometheus.Counter
	broadcastBytesSent     prometheus.Counter
	inlineBlocksSent       prometheus.Counter
	inlineBlocksReceived   prometheus.Counter
	broadcastBytesReceived *prometheus.CounterVec
	blockBytesSent         *prometheus.CounterVec
	blockBytesReceived     *prometheus.CounterVec
	lastSync               *prometheus.GaugeVec
	changeDelay            prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, m *Manager) *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "cheops_crdt_" + name, Help: help})
	}
	bySite := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cheops_crdt_" + name, Help: help}, []string{"site"})
	}
	x := &metrics{
		refused:        counter("refused_total", "Block requests, heads pushes and messages refused because the peer is not a member of the group."),
		malformed:      counter("malformed_total", "Malformed requests and messages, and blocks whose hash did not match their CID."),
		repairs:        counter("repairs_total", "DAG repairs completed (after an unclean stop or a failed walk)."),
		repairFailures: counter("repair_failures_total", "DAG repairs that failed and will be retried."),
		fetches:        counter("fetches_total", "Block requests sent to members."),
		fetchRetries:   counter("fetch_retries_total", "Block requests sent again to a member on a new connection after the one they went on closed under them (a heal)."),
		digestMismatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "cheops_crdt_digest_mismatches_total",
			Help: "Anti-entropy rounds in which a shared group's heads differed (heads then pushed both ways)."}),
		lagRepairs: prometheus.NewCounter(prometheus.CounterOpts{Name: "cheops_crdt_lag_repairs_total",
			Help: "Repairs started because a group had the same heads as a member but fewer merged DAG nodes for two rounds."}),
		fetching:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "cheops_crdt_pending_fetches", Help: "Block fetches in progress (blocks the replicas wait for)."}),
		blocksFetched:   counter("blocks_fetched_total", "New blocks received over the block protocol."),
		duplicateBlocks: counter("duplicate_blocks_total", "Blocks received over the block protocol that this site already held."),
		blocksSent:      counter("blocks_sent_total", "Blocks sent over the block protocol."),
		headsPushed:     counter("heads_pushed_total", "Heads pushed to members that connected."),
		broadcasts:      counter("broadcasts_total", "Head announcements made (each sent to the group's connected members only)."),
		linkDrops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cheops_crdt_link_drops_total",
			Help: "Messages dropped on a link, by where: open (no stream could be opened or negotiated to the peer: gone, or too slow to answer within FetchTimeout), write (the write failed, and again on a new stream), queue (the link's queue stayed full for the sender's whole wait). Each starts an anti-entropy round with the peer, which repeats the heads."}, []string{"at"}),
		queueDrops:      counter("replica_queue_drops_total", "Announcements received whose heads were not handed to the group's replica because its queue was full (the replica is behind); their blocks are kept, and later announcements and anti-entropy bring the heads again."),
		pushesCoalesced: counter("pushes_coalesced_total", "Heads pushes not sent because a newer push of their group was queued behind them on the same link."),
		linkResends:     counter("link_resends_total", "Announcements written again on a new stream after their link's stream failed (its connection closed under it)."),
		digestRounds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cheops_crdt_digest_rounds_total",
			Help: "Anti-entropy rounds this site started, by outcome: same (the summaries matched: two small frames) or compared (every shared group's digest sent)."}, []string{"outcome"}),
		digestDeferred:       counter("digest_deferred_total", "Groups left out of an anti-entropy round, asked or answered, because announcements of them may be in flight: an announcement of a new delta queued on or written to the member's link within 3 digest intervals, heads held here not merged yet, or a write or announcement here within SettleAfter. A later round compares them."),
		digestRoundsDeferred: counter("digest_rounds_deferred_total", "Anti-entropy rounds this site started with every group it shares with the member deferred (in flight, see digest_deferred_total): a summary of none is sent, for the member to name a group of which it dropped a message."),
		digestRoundsAnswered: counter("digest_rounds_answered_total", "Anti-entropy rounds members started with this site (of each pair of sites, the one whose peer id sorts first starts the periodic rounds)."),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cheops_crdt_group_wakes_total",
			Help: "Sleeping groups whose replica was opened again, by what woke it: write (a local write's commit), use (a local read, delete or scan, or a forced repair), announcement (a member's heads with their blocks), push (a member's heads alone: a heads push, or an announcement of a large delta), deferred (an announcement kept while no slot was free), repair, orphan (heads delivered after a rewalk)."}, []string{"for"}),
		sleeps:               counter("group_sleeps_total", "Idle groups whose replica was closed (IdleAfter without use)."),
		evictions:            counter("group_evictions_total", "Idle replicas put to sleep before IdleAfter to free a slot for a group waking (Config.MaxAwake)."),
		deferred:             counter("deferred_announcements_total", "Announcements for a sleeping group received while no replica slot was free (Config.MaxAwake): their heads wait for a slot instead of the link's reader."),
		rewalks:              counter("orphan_rewalks_total", "Groups whose merged marks were forgotten and DAG walked again because a member kept announcing a head marked merged here that no head here reaches (a walk that ended early)."),
		seedWaits:            counter("seed_waits_total", "Local commits into a replica with no heads that waited for the merge of its first announcement (seed.go)."),
		redundantHeads:       counter("redundant_heads_total", "Heads dropped because another head of their group is above them, found as the group went to sleep or when a member's push showed it (frontier.go)."),
		unmergedHeads:        counter("unmerged_heads_total", "Groups merged again from their heads because one of them, or one dropped below another, was not marked merged (frontier.go)."),
		commits:              counter("commits_total", "Deltas committed by local writes (concurrent writes into one group share one)."),
		committedWrites:      counter("committed_writes_total", "Put and PutBatch calls committed (over commits_total: writes per delta)."),
		broadcastBytesSent:   counter("broadcast_bytes_sent_total", "Bytes of head announcements sent on links (to members only)."),
		inlineBlocksSent:     counter("inline_blocks_sent_total", "Blocks sent inside broadcasts with their heads."),
		inlineBlocksReceived: counter("inline_blocks_received_total", "Blocks received inside broadcasts."),
		broadcastBytesReceived: bySite("broadcast_bytes_received_total",
			"Bytes of head announcements received on links, by sending site."),
		blockBytesSent:     bySite("block_bytes_sent_total", "Bytes of DAG blocks sent over the block protocol, by receiving site."),
		blockBytesReceived: bySite("block_bytes_received_total", "Bytes of DAG blocks received over the block protocol, by sending site."),
		lastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cheops_crdt_last_sync_timestamp_seconds",
			Help: "When this site last received heads or blocks from a site (any group: a per-group series would grow with the groups; `cheops catalog status` shows each group's exchanges)."}, []string{"site"}),
		changeDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cheops_crdt_change_delivery_seconds",
			Help:    "Time from a key's change in a group's store to its delivery to the watchers (the catalog's view): how far the view lags behind the store.",
			Buckets: []float64{0.001, 0.005, 0.02, 0.1, 0.5, 1, 2, 5, 10}}),
	}
	reg.MustRegister(x.digestMismatches, x.lagRepairs, x.refused, x.malformed, x.repairs, x.repairFailures, x.fetches, x.fetchRetries, x.fetching,
		x.blocksFetched, x.duplicateBlocks, x.blocksSent, x.headsPushed, x.broadcasts, x.linkDrops, x.queueDrops, x.linkResends, x.pushesCoalesced, x.wakes, x.sleeps, x.evictions, x.deferred, x.rewalks, x.seedWaits, x.redundantHeads, x.unmergedHeads, x.commits, x.committedWrites, x.digestRounds, x.digestDeferred, x.digestRoundsDeferred, x.digestRoundsAnswered,
		x.broadcastBytesSent, x.inlineBlocksSent, x.inlineBlocksReceived, x.broadcastBytesReceived,
		x.blockBytesSent, x.blockBytesReceived, x.lastSync, x.changeDelay, groupCollector{m: m, max: maxListedGroups})
	return x
}

// groupCollector reads the groups' state at scrape time. A site in
// thousands of groups (~2,500 each at 100 sites × 100,000 resources)
// pays for a scrape neither a datastore read per group nor a series per
// group: it counts every group in a few gauges, and gives the
// per-group series only of the groups in trouble (more than one head,
// blocks queued, a repair due, or heads that differed from a member's at
// the last exchange), the first max of them by name. `cheops catalog status`
// shows any group whole.
type groupCollector struct {
	m   *Manager
	max int
}

// maxListedGroups is how many groups in trouble a scrape lists one by
// one: enough to name those to look at, bounded when a partition leaves
// every group written during it different from its members'.
const maxListedGroups = 100

var (
	descGroups   = prometheus.NewDesc("cheops_crdt_groups", "Replication groups this site has joined.", nil, nil)
	descAwake    = prometheus.NewDesc("cheops_crdt_groups_awake", "Joined groups whose replica is open (the others sleep: no goroutine, no timer).", nil, nil)
	descUnmerged = prometheus.NewDesc("cheops_crdt_groups_unmerged", "Joined groups with more than one head (concurrent writes not merged yet).", nil, nil)
	descDiverged = prometheus.NewDesc("cheops_crdt_groups_diverged", "Joined groups whose heads differed from a member's at the last anti-entropy exchange with it.", nil, nil)
	descDirtyAll = prometheus.NewDesc("cheops_crdt_groups_dirty", "Joined groups whose replica waits for a repair.", nil, nil)
	descQueueAll = prometheus.NewDesc("cheops_crdt_queued_jobs", "DAG blocks queued for processing, in every group.", nil, nil)
	descHeads    = prometheus.NewDesc("cheops_crdt_group_heads", "Heads of the group's DAG (more than one: concurrent writes not merged yet); for groups in trouble only.", []string{"group"}, nil)
	descHeight   = prometheus.NewDesc("cheops_crdt_group_height", "Highest DAG height of the group; for groups in trouble only.", []string{"group"}, nil)
	descQueued   = prometheus.NewDesc("cheops_crdt_group_queued_jobs", "DAG blocks queued for processing in the group; for groups in trouble only.", []string{"group"}, nil)
	descDirty    = prometheus.NewDesc("cheops_crdt_group_dirty", "1 while the group's replica waits for a repair; for groups in trouble only.", []string{"group"}, nil)
	descMatch    = prometheus.NewDesc("cheops_crdt_group_digest_match", "1 when the group's heads equalled the member's at the last anti-entropy exchange, 0 when they differed; for groups in trouble only.", []string{"group", "site"}, nil)
)

func (c groupCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGroups, descAwake, descUnmerged, descDiverged, descDirtyAll, descQueueAll, descHeads, descHeight, descQueued, descDirty, descMatch} {
		ch <- d
	}
}

func (c groupCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	groups := c.m.Groups()
	var unmerged, diverged, dirty, queued int
	type listed struct {
		g  *Group
		st groupStats
	}
	var trouble []listed
	for _, g := range groups {
		st := g.stats(ctx)
		differs := c.differs(g)
		if len(st.heads) > 1 {
			unmerged++
		}
		if differs {
			diverged++
		}
		if st.dirty {
			dirty++
		}
		queued += st.queued
		if (len(st.heads) > 1 || differs || st.dirty || st.queued > 0) && len(trouble) < c.max {
			trouble = append(trouble, listed{g, st})
		}
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descGroups, float64(len(groups)))
	gauge(descAwake, float64(c.m.Awake()))
	gauge(descUnmerged, float64(unmerged))
	gauge(descDiverged, float64(diverged))
	gauge(descDirtyAll, float64(dirty))
	gauge(descQueueAll, float64(queued))
	for _, t := range trouble {
		name := t.g.name
		gauge(descHeads, float64(len(t.st.heads)), name)
		gauge(descHeight, float64(t.st.height), name)
		gauge(descQueued, float64(t.st.queued), name)
		gauge(descDirty, boolGauge(t.st.dirty), name)
		for _, p := range t.g.peers {
			if e, ok := c.m.exchanges.get(t.g, p); ok {
				gauge(descMatch, boolGauge(e.Match), name, c.m.siteOf(p))
			}
		}
	}
}

// differs reports whether g's heads differed from a member's at their
// last exchange.
func (c groupCollector) differs(g *Group) bool {
	for _, p := range g.peers {
		if e, ok := c.m.exchanges.get(g, p); ok && !e.Match {
			return true
		}
	}
	return false
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
