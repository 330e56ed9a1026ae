package crdt

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"

	"cheops/internal/keptstream"
)

// DigestProtocol carries anti-entropy rounds: a member sends another the
// digests of the heads of every group they share; the groups whose
// digests differ have their heads pushed both ways (and a repair
// checked), so that no single lost heads message can leave a group
// diverged. Only groups both sides are members of are ever named.
const DigestProtocol protocol.ID = "/cheops/crdt/digest/1.0.0"

// DigestKeptProtocol carries the same rounds as DigestProtocol, one after
// the other on a stream the pair keeps: the answering side waits for the
// next round (up to digestKeep) instead of closing, and the asking side
// starts its next round on it if it is fresh enough (digestReuse). At
// 100 sites a pair with writes runs a round every DigestInterval, and
// opening and closing a stream for each (a multistream handshake, the
// resource manager's scopes, yamux's opening and closing frames, a
// handler goroutine) was ~4 % of the CPU of 100 × 20,000 writes. A site
// that speaks only DigestProtocol gets a stream per round, as before.
const DigestKeptProtocol protocol.ID = "/cheops/crdt/digest/1.1.0"

// digestKeep is how long the answering side of a kept digest stream
// waits for the next round: three intervals, so that the asker's next
// round, every interval while the pair is active, comes well before. A
// pair gone quiet (rounds further apart) ends its stream, so that an idle
// pair keeps no goroutine.
func (m *Manager) digestKeep() time.Duration { return 3 * m.cfg.DigestInterval }

// digestReuse is how long the asking side reuses a kept stream after its
// last round: less than digestKeep, so that it does not pick a stream the
// other side is closing (a round that fails on a kept stream before its
// first answer is run again on a new one, in case).
func (m *Manager) digestReuse() time.Duration { return 2 * m.cfg.DigestInterval }

// digestRequest is one round, from the side that starts it. A round
// opens with a request that carries only Summary: when the answer says
// the other side's summary is the same, the round is over (an idle pair
// of sites exchanges two small frames, whatever the number of groups they
// share); otherwise the full request follows on the same stream.
type digestRequest struct {
	// Summary hashes the name, heads digest and merged count of every
	// group the asker shares with the answerer.
	Summary string            `json:"summary,omitempty"`
	Digests map[string]string `json:"digests"` // group → digest of its heads
	// Processed counts the DAG nodes merged per group: two members with
	// the same heads hold the same DAG, and once both merged all of it,
	// the same count. Fewer on one side with equal heads means a node
	// below the heads was never merged there (see lagging).
	Processed map[string]int `json:"processed,omitempty"`
	// Deferred names the shared groups the asker leaves out of this
	// round (not settled here: see Config.SettleAfter); the answerer
	// leaves them out of its summary and does not push their heads as
	// groups the asker never heard of. Sites that do not know the field
	// ignore it: the summaries then differ and the groups named in
	// Digests are compared, as before.
	Deferred []string `json:"deferred,omitempty"`
	// All asks for every shared group to be compared, settled or not: a
	// round after a connection event (catch-up), where what was in
	// flight may have been lost with the connection.
	All bool `json:"all,omitempty"`
	// Lost names the groups of Digests of which a message between the
	// two sites was dropped at the asker (a full replica queue, a link
	// send that gave up): the answerer compares them, settled or not.
	Lost []string `json:"lost,omitempty"`
}

// digestAnswer names the groups whose digests differed, and gives the
// answering side's processed counts of the groups whose heads matched.
type digestAnswer struct {
	// Same answers a summary: the answerer's summary of the groups it
	// shares with the asker is equal.
	Same      bool           `json:"same,omitempty"`
	Differ    []string       `json:"differ"`
	Processed map[string]int `json:"processed,omitempty"`
	// Deferred names the groups of the request that the answerer left
	// out, not settled at its end: neither equal nor different yet.
	Deferred []string `json:"deferred,omitempty"`
}

// digestResult is what this site last learnt of a group from one member.
type digestResult struct {
	At    time.Time
	Match bool
}

// exchanges records anti-entropy's state per member and per group and
// member. The last result with each member is kept in the group itself
// (Group.exchanged, guarded by mu): a map entry per group and member,
// as before, cost an idle group ~0.2 KiB at each of its members, a map
// per group ~0.5 KiB.
type exchanges struct {
	mu sync.Mutex
	// lagging counts, per group, the consecutive rounds in which this
	// site had the same heads as a member but fewer merged nodes.
	lagging map[string]int
	// rounds is when this site last took part in a round with each
	// member, asking or answering (unix ns).
	rounds map[peer.ID]int64
	// deferred is when a group was first left out of a round with a
	// member, not settled, or that a message of it to or from that
	// member was lost; cleared once they compare it.
	deferred map[exchangeKey]deferral
}

// deferral is a group's state of deferral with one member.
type deferral struct {
	since int64 // first left out, or lost (unix ns)
	// lost: a message of the group between this site and the member was
	// dropped: not settling, whatever its activity, until compared.
	lost bool
}

// settleLimit bounds, in SettleAfter periods, how long a group can be
// left out of the rounds with one member because it keeps changing: a
// group written without pause is compared at least that often.
const settleLimit = 4

// inFlightLimit bounds, in DigestIntervals, how long a group can be
// left out of the rounds with one member because a message of it is in
// flight between them, or it holds heads not merged yet
// (Manager.settling).
const inFlightLimit = 3

// inFlightFor is that bound (ns): how long after a message of a group
// was written to a member it may still be in flight.
func (m *Manager) inFlightFor() int64 { return inFlightLimit * int64(m.cfg.DigestInterval) }

// deferralsKept is how long a deferral is kept (ns) after it began: past
// both limits, so that a group deferred without pause still reaches its
// limit and is compared.
func (m *Manager) deferralsKept() int64 {
	return max(2*settleLimit*int64(m.cfg.SettleAfter), m.inFlightFor()) + int64(m.cfg.DigestInterval)
}

// mayDefer reports whether group may be left out of a round with p now
// (unix ns), and records its first deferral: false once it has been
// deferred with p for limit (ns), or a message of it was lost, and then
// until it is compared; false too while the last comparison with p found
// it different (see Manager.settling).
func (x *exchanges) mayDefer(g *Group, p peer.ID, now, limit int64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e, ok := g.exchangedWith(p); ok && !e.match {
		return false
	}
	return x.deferLocked(g, p, now, limit)
}

// mayDeferMerging is mayDefer for a group that holds heads it has not
// merged yet (Group.merging): the last comparison's result does not
// count, since what it found missing may be the very heads in hand.
func (x *exchanges) mayDeferMerging(g *Group, p peer.ID, now, limit int64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.deferLocked(g, p, now, limit)
}

// deferLocked is mayDefer's deferral record (x.mu held).
func (x *exchanges) deferLocked(g *Group, p peer.ID, now, limit int64) bool {
	k := exchangeKey{g.name, p}
	d, ok := x.deferred[k]
	if !ok {
		if x.deferred == nil {
			x.deferred = map[exchangeKey]deferral{}
		}
		x.deferred[k] = deferral{since: now}
		return true
	}
	return !d.lost && now-d.since < limit
}

// lostOf returns the names of the groups of which a message between this
// site and p was dropped since they last compared it.
func (x *exchanges) lostOf(p peer.ID, names []string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var lost []string
	for _, name := range names {
		if x.deferred[exchangeKey{name, p}].lost {
			lost = append(lost, name)
		}
	}
	return lost
}

// lost records that a message of group between this site and p was
// dropped: the group is compared at their next round, settled or not.
func (x *exchanges) lost(group string, p peer.ID) {
	now := time.Now().UnixNano()
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.deferred == nil {
		x.deferred = map[exchangeKey]deferral{}
	}
	x.deferred[exchangeKey{group, p}] = deferral{since: now, lost: true}
}

// forgetDeferrals drops deferrals older than before (unix ns): groups
// left or members gone since (a group compared has its entry removed).
func (x *exchanges) forgetDeferrals(before int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for k, d := range x.deferred {
		if d.since < before {
			delete(x.deferred, k)
		}
	}
}

// roundWith records a round with p, asked or answered, starting now.
func (x *exchanges) roundWith(p peer.ID) { x.roundWithAt(p, time.Now().UnixNano()) }

// roundWithAt records a round with p that started at now (unix ns).
func (x *exchanges) roundWithAt(p peer.ID, now int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.rounds == nil {
		x.rounds = map[peer.ID]int64{}
	}
	x.rounds[p] = now
}

// lastRound is when this site last took part in a round with p (unix
// ns, 0: never).
func (x *exchanges) lastRound(p peer.ID) int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.rounds[p]
}

// forgetRounds drops the round times of the members not in keep.
func (x *exchanges) forgetRounds(keep func(peer.ID) bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for p := range x.rounds {
		if !keep(p) {
			delete(x.rounds, p)
		}
	}
}

type exchangeKey struct {
	group string
	p     peer.ID
}

// exchangeResult is a digestResult as kept: its time in unix ns (0: no
// exchange yet).
type exchangeResult struct {
	at    int64
	match bool
}

// exchangedWith is the last result with member p (x.mu held).
func (g *Group) exchangedWith(p peer.ID) (exchangeResult, bool) {
	i := slices.Index(g.peers, p)
	if i < 0 || i >= len(g.exchanged) || g.exchanged[i].at == 0 {
		return exchangeResult{}, false
	}
	return g.exchanged[i], true
}

// lag records one round's comparison of merged nodes for a group with
// equal heads and reports whether the gap has lasted long enough to
// repair: two rounds in a row (a gap seen once may be a merge in
// progress).
func (x *exchanges) lag(group string, behind bool) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.lagging == nil {
		x.lagging = map[string]int{}
	}
	if !behind {
		delete(x.lagging, group)
		return false
	}
	x.lagging[group]++
	return x.lagging[group] >= 2
}

// set records a round's result for g with member p (not a member:
// nothing).
func (x *exchanges) set(g *Group, p peer.ID, match bool) {
	now := time.Now().UnixNano()
	i := slices.Index(g.peers, p)
	if i < 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if g.exchanged == nil {
		g.exchanged = make([]exchangeResult, len(g.peers))
	}
	g.exchanged[i] = exchangeResult{at: now, match: match}
	delete(x.deferred, exchangeKey{g.name, p})
}

func (x *exchanges) get(g *Group, p peer.ID) (digestResult, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := g.exchangedWith(p)
	if !ok {
		return digestResult{}, false
	}
	return digestResult{At: time.Unix(0, e.at).UTC(), Match: e.match}, true
}

// headsDigest is a short hash of a group's sorted heads: equal on two
// members whose replicas merged the same DAG.
func (g *Group) headsDigest(ctx context.Context) string {
	return headsDigestOf(g.knownHeads(ctx))
}

// headsDigestOf is the digest of a set of heads, in any order.
func headsDigestOf(heads []cid.Cid) string {
	names := make([]string, len(heads))
	for i, h := range heads {
		names[i] = h.String()
	}
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		h.Write([]byte(n))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// groupDigest is a group's heads digest and merged count, as of the
// group's last activity.
type groupDigest struct {
	active    int64
	heads     string
	processed int
	// asleep: computed while the group slept (its heads read from the
	// datastore, after every merge had committed), or as it was put to
	// sleep; cids are then its heads.
	asleep bool
	cids   []cid.Cid
	height uint64 // the greatest height of cids
}

// sleepingHeads returns the heads of a sleeping group as its digest
// cached them; ok is false when none is cached as of its last activity.
func (g *Group) sleepingHeads() (heads []cid.Cid, ok bool) {
	last := g.lastDigest.Load()
	if last == nil || !last.asleep || last.active != g.active.Load() {
		return nil, false
	}
	return last.cids, true
}

// digest returns the group's heads digest and merged count. A sleeping
// group cannot change without waking (which marks it active), so its
// digest is computed once per sleep, as it is put to sleep (from the
// replica's heads in memory: reading them back from the datastore at the
// next round was 6 % of the CPU of 100 sites × 20,000 writes) or, after
// a restart, from the datastore: an idle group costs anti-entropy rounds
// no datastore read. An awake one has its heads read each time (a
// merge reports its changes before it commits its heads); its merged
// count is kept as nodes are merged (mergedCount), never scanned again.
func (g *Group) digest(ctx context.Context) groupDigest {
	active := g.active.Load()
	last := g.lastDigest.Load()
	if last != nil && last.active == active && last.asleep {
		return *last
	}
	asleep := g.awake() == nil
	var heads []cid.Cid
	var height uint64
	var err error
	if asleep {
		heads, height, err = g.storedHeads(ctx)
	} else {
		heads = g.knownHeads(ctx)
	}
	d := groupDigest{active: active, heads: headsDigestOf(heads), processed: g.processedCount(ctx), asleep: asleep}
	if asleep {
		d.cids, d.height = heads, height
	}
	// Kept only if read whole (not cut short by ctx, say a scrape's
	// deadline) and still true.
	if err == nil && d.processed >= 0 && g.active.Load() == active && (!asleep || g.awake() == nil) {
		g.lastDigest.Store(&d)
	}
	return d
}

// summary hashes the digests of groups, sorted by name.
func summary(ctx context.Context, groups []*Group) string {
	slices.SortFunc(groups, func(a, b *Group) int { return strings.Compare(a.name, b.name) })
	h := sha256.New()
	for _, g := range groups {
		d := g.digest(ctx)
		fmt.Fprintf(h, "%s\x00%s\x00%d\x00", g.name, d.heads, d.processed)
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// processedCount is the number of DAG nodes this site merged in the
// group (-1: unknown, the datastore failed). It is counted from the
// store once per group and process, then kept by the replica's store as
// it marks nodes merged.
func (g *Group) processedCount(ctx context.Context) int {
	c := &g.mergedNodes
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known {
		n, err := countKeys(ctx, g.m.cfg.Datastore, g.crdtPrefix().ChildString(processedNamespace))
		if err != nil {
			return -1
		}
		c.n, c.known = n, true
	}
	return c.n
}

// countKeys counts the keys under prefix.
func countKeys(ctx context.Context, store ds.Read, prefix ds.Key) (int, error) {
	res, err := store.Query(ctx, query.Query{Prefix: prefix.String(), KeysOnly: true})
	if err != nil {
		return 0, fmt.Errorf("count keys under %s: %w", prefix, err)
	}
	defer res.Close()
	n := 0
	for r := range res.Next() {
		if r.Error != nil {
			return 0, fmt.Errorf("count keys under %s: %w", prefix, r.Error)
		}
		n++
	}
	return n, nil
}

// mergedCount is a group's number of merged DAG nodes: the marks
// go-ds-crdt keeps under processedNamespace. Counting the marks was a
// scan per group and anti-entropy round of an awake group (a query, with
// its goroutine and channel, at both ends of a round: a third of the
// bytes allocated by a 30-site write phase); the count is now taken
// from the store once per process, at the first need, and then kept up
// to date by countingStore as the replica marks nodes.
//
// It is exact as long as the marks change only through the group's
// replica (or forgetProcessed, which sets it to 0): a mark deleted
// behind the manager's back is seen after a restart.
type mergedCount struct {
	mu    sync.Mutex
	known bool // n was counted from the store
	n     int
}

// none reports whether the group is known to have merged no node here.
func (c *mergedCount) none() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.known && c.n == 0
}

// set records a count known by other means (forgetProcessed: 0).
func (c *mergedCount) set(n int) {
	c.mu.Lock()
	c.n, c.known = n, true
	c.mu.Unlock()
}

// countingStore is the datastore a group's go-ds-crdt replica works on:
// the site's datastore, whose puts of processed marks update the group's
// mergedCount. go-ds-crdt v0.6 writes a mark with a plain Put once the
// node's delta is merged (markProcessed), never in a batch, and never
// deletes one; a delete under the prefix makes the count unknown (it is
// counted again from the store when next needed).
//
// It also keeps the group's dirty mark (dirtyMark): go-ds-crdt reads,
// sets and removes it through this store.
type countingStore struct {
	ds.Batching
	prefix  string // the processed namespace, with a trailing "/"
	count   *mergedCount
	dirty   *dirtyMark
	dirtyMu *sync.Mutex // Manager.dirtyMu
	mark    ds.Key      // the dirty mark's key
}

func newCountingStore(g *Group) countingStore {
	return countingStore{Batching: g.m.cfg.Datastore, prefix: g.crdtPrefix().ChildString(processedNamespace).String() + "/", count: &g.mergedNodes,
		dirty: &g.dirtyMark, dirtyMu: &g.m.dirtyMu, mark: g.dirtyKey()}
}

// Has answers for the dirty mark from dirtyMark.
func (s countingStore) Has(ctx context.Context, key ds.Key) (bool, error) {
	if key == s.mark {
		return s.dirty.has(ctx, s.Batching, key)
	}
	return s.Batching.Has(ctx, key)
}

// Put counts a processed mark the store did not hold, and records the
// dirty mark set.
func (s countingStore) Put(ctx context.Context, key ds.Key, value []byte) error {
	if key == s.mark {
		return s.dirty.change(s.dirtyMu, true, func() error { return s.Batching.Put(ctx, key, value) })
	}
	if !strings.HasPrefix(key.String(), s.prefix) {
		return s.Batching.Put(ctx, key, value)
	}
	c := s.count
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known {
		// Counted from the store when needed, this mark with it.
		return s.Batching.Put(ctx, key, value)
	}
	had, err := s.Batching.Has(ctx, key)
	if err != nil {
		c.known = false
		return s.Batching.Put(ctx, key, value)
	}
	if err := s.Batching.Put(ctx, key, value); err != nil {
		return err
	}
	if !had {
		c.n++
	}
	return nil
}

// Delete makes the count unknown when it deletes a processed mark, and
// records the dirty mark removed.
func (s countingStore) Delete(ctx context.Context, key ds.Key) error {
	if key == s.mark {
		return s.dirty.change(s.dirtyMu, false, func() error { return s.Batching.Delete(ctx, key) })
	}
	if !strings.HasPrefix(key.String(), s.prefix) {
		return s.Batching.Delete(ctx, key)
	}
	c := s.count
	c.mu.Lock()
	defer c.mu.Unlock()
	c.known = false
	return s.Batching.Delete(ctx, key)
}

// compareProcessed acts on a member's merged-node count for a group whose
// heads equal this site's: behind for two rounds, the group is repaired
// (a full walk that merges every node not merged yet).
func (m *Manager) compareProcessed(ctx context.Context, g *Group, theirs int) {
	if theirs < 0 {
		return
	}
	mine := g.processedCount(ctx)
	if mine < 0 {
		return
	}
	if m.exchanges.lag(g.name, mine < theirs) {
		m.log.Warn("same heads as a member but fewer merged nodes: repairing", "group", g.name, "merged", mine, "member", theirs)
		m.metrics.lagRepairs.Inc()
		g.forceRepair(ctx)
	}
}

// shared lists the groups this site shares with p (a copy: callers may
// sort it).
func (m *Manager) shared(p peer.ID) []*Group {
	m.mu.Lock()
	gs := m.byPeer[p] // add only appends past its length; remove makes a new array
	m.mu.Unlock()
	return slices.Clone(gs)
}

// peerGroups indexes a site's groups by member: every anti-entropy round,
// heads push and connection event asks for the groups shared with one
// peer, and a scan of every group for each was 8 % of the CPU of a
// 100-site write phase (1,200 groups per site, 99 peers), plus a copy of
// the whole group list per call. Guarded by Manager.mu.
type peerGroups map[peer.ID][]*Group

// add indexes g under each of its members but this site.
func (pg peerGroups) add(g *Group, self peer.ID) {
	for _, p := range g.peers {
		if p != self {
			pg[p] = append(pg[p], g)
		}
	}
}

// remove drops g from the index.
func (pg peerGroups) remove(g *Group) {
	for _, p := range g.peers {
		gs := pg[p]
		if i := slices.Index(gs, g); i >= 0 {
			if len(gs) == 1 {
				delete(pg, p)
			} else {
				// A new array: readers may hold the old one (latestShared).
				pg[p] = slices.Concat(gs[:i], gs[i+1:])
			}
		}
	}
}

// sharedActivity is what the anti-entropy loop needs to know of one
// member: the latest activity (unix ns) of the groups this site shares
// with it, and whether it is connected.
type sharedActivity struct {
	active    int64
	connected bool
}

// latestShared returns, for every member of a group, the latest
// activity of the groups this site shares with it and whether it is
// connected now.
func (m *Manager) latestShared() map[peer.ID]sharedActivity {
	m.mu.Lock()
	byPeer := make(map[peer.ID][]*Group, len(m.byPeer))
	for p, gs := range m.byPeer {
		byPeer[p] = gs // add only appends past this length; remove makes a new array
	}
	m.mu.Unlock()
	latest := make(map[peer.ID]sharedActivity, len(byPeer))
	nw := m.cfg.Host.Network()
	for p, gs := range byPeer {
		var active int64
		for _, g := range gs {
			active = max(active, g.active.Load())
		}
		latest[p] = sharedActivity{active: active, connected: nw.Connectedness(p) == network.Connected}
	}
	return latest
}

// sharedActiveSince reports whether a group this site shares with p was
// used or changed after since (unix ns).
func (m *Manager) sharedActiveSince(p peer.ID, since int64) bool {
	for _, g := range m.shared(p) {
		if g.active.Load() > since {
			return true
		}
	}
	return false
}

// antiEntropyLoop runs rounds with every connected member, one stream per
// peer whatever the number of groups: each DigestInterval while either
// side is active, and further apart while the two stay quiet. A round
// that ends on equal summaries with nothing used or changed in the shared
// groups since the previous one doubles the wait before the next, up to
// maxQuietRounds intervals; any activity in a shared group, or a round
// that compared, brings it back to every interval. A connection that
// opens runs a round at once, from both sides (catchUpLoop).
//
// Of the two sites of a pair, one starts the periodic rounds: the one
// whose peer id sorts first (asks). A round's effect is the same from
// either side (the groups that differ have their heads pushed both ways
// and a repair checked at both ends), and each side running its own
// every interval made 100 × 99 rounds per interval at 100 sites (31,000
// in a 40 s write phase) where 100 × 99 / 2 do. The other site answers,
// and starts a round only for a change of its own that the asker's
// rounds have not come for: something shared was used or changed here
// since the pair's last round (either side's), and that round is more
// than answerAfter intervals old. So a member whose announcements were
// lost while the asker, quiet, waits up to maxQuietRounds intervals
// still has them compared within about answerAfter intervals; and while
// the asker runs a round every interval (the pair is active), the other
// side starts none. The answering side also rounds again, at the same
// pace, after a round of its own that did not end on equal summaries:
// the heads it pushed after a mismatch go on a link and may be lost (a
// full queue drops them), and when the asker knows no group shared with
// it (it never heard of the one the answering side wrote into), no
// round of the asker's would ever compare that group
// (TestAnswererRoundsAgainAfterALostPush).
//
// A member this site is not connected to gets a round, which dials it,
// only when this site has news for it: a shared group used or changed
// since their last round. Announcements go only to connected members
// (links do not dial: a member cut off must not hold up the writes), and
// a member is otherwise caught up with when it connects; but nothing
// made it connect. At 100 sites, 1–2 % of the pairs lost their
// connection during the writes, and membership, probing 8 sites per
// round, took up to a minute and a half to bring each back: the writes
// made meanwhile waited that long (TestDisconnectedMemberIsDialledForNews).
// The dial's connection brings the catch-up of a connection (heads
// pushes, a round from both sides). A dial that fails (the member is
// down, or cut off) doubles the wait before the next, up to
// maxQuietRounds intervals, unless the pair was connected less than
// lostRecently intervals ago: then the next interval tries again
// (TestLostConnectionIsRetriedEachInterval).
//
// Rounds with different members run concurrently, one at a time per
// member: a member that does not answer (its connection stalled by a
// cut, until FetchTimeout) holds up only its own rounds. (One loop for
// all members held every round of a site for up to FetchTimeout during a
// cut, and then ran them one after the other after the heal.)
func (m *Manager) antiEntropyLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.DigestInterval)
	defer t.Stop()
	type cadence struct {
		wait, skip int   // intervals between rounds; intervals left to skip
		last       int64 // when the last round started (unix ns)
		busy       bool  // a round is in progress
		// unsettled: this site's last round did not end on equal
		// summaries (it compared, or failed): the answering side of the
		// pair rounds again (see antiEntropyLoop).
		unsettled bool
		// seen is when the pair was last seen connected (unix ns), at
		// an interval's tick.
		seen int64
		// again: a message with the member was dropped during the
		// round; another starts when it ends (lossRound).
		again bool
	}
	type roundEnd struct {
		p            peer.ID
		same, failed bool
		deferred     bool // groups were left out, not settled
	}
	self := m.cfg.Host.ID()
	cadences := map[peer.ID]*cadence{}
	ends := make(chan roundEnd)
	defer m.digests.Close()
	start := func(p peer.ID, c *cadence, now int64) {
		c.last, c.busy = now, true
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			res, err := m.digestRound(m.ctx, p, false)
			if err != nil && m.ctx.Err() == nil {
				m.log.Debug("anti-entropy round", "peer", p, "err", err)
			}
			select {
			case ends <- roundEnd{p: p, same: res.same, failed: err != nil, deferred: res.deferred > 0}:
			case <-m.ctx.Done():
			}
		}()
	}
	// lossRound starts a round with p now, or once its running round
	// ends, if p is connected (a member cut off is caught up with when
	// it connects), and no round with p started within the last
	// DigestInterval / lossRoundsPerInterval: a loss that repeats (a
	// store that fails every receive) must not chain rounds back to
	// back; its mark has the group compared at the pair's next round.
	lossRound := func(p peer.ID) {
		if m.cfg.Host.Network().Connectedness(p) != network.Connected {
			return
		}
		now := time.Now().UnixNano()
		c := cadences[p]
		if c == nil {
			c = &cadence{wait: 1}
			cadences[p] = c
		}
		c.seen = now
		if c.last > 0 && now-c.last < int64(m.cfg.DigestInterval)/lossRoundsPerInterval {
			return
		}
		if c.busy {
			c.again = true
			return
		}
		start(p, c, now)
	}
	for {
		select {
		case <-m.ctx.Done():
			return
		case p := <-m.losses:
			lossRound(p)
			continue
		case e := <-ends:
			c := cadences[e.p]
			if c != nil {
				// A round that deferred groups is followed by another
				// at the next interval, from either side, to compare
				// them once settled.
				c.busy, c.unsettled = false, !e.same || e.deferred
				lost := e.failed && m.cfg.Host.Network().Connectedness(e.p) != network.Connected
				switch {
				case lost && time.Now().UnixNano()-c.seen < int64(lostRecently)*int64(m.cfg.DigestInterval):
					// Connected a moment ago: the dial failed on a
					// starved host or a backoff, not on a member
					// that is down; try again at the next interval.
					c.wait = 1
				case e.same && !e.deferred || lost:
					c.wait = min(2*c.wait, maxQuietRounds)
				default:
					c.wait = 1
				}
				c.skip = c.wait - 1
			}
			if c != nil && c.again {
				c.again = false
				lossRound(e.p)
				continue
			}
			if c == nil || e.same && !e.deferred && !m.sharedActiveSince(e.p, c.last) {
				// Nothing shared moved since the round started: the next
				// round is two intervals away or more, and the kept
				// stream (with the answering side's goroutine) ends now.
				// A quiet pair keeps none between its rounds.
				m.digests.Drop(e.p)
			}
			continue
		case <-t.C:
		}
		m.digests.Prune(m.digestReuse())
		latest := m.latestShared() // the latest activity shared with each member
		for p, c := range cadences {
			if _, ok := latest[p]; !ok && !c.busy {
				delete(cadences, p)
			}
		}
		m.exchanges.forgetRounds(func(p peer.ID) bool { _, ok := latest[p]; return ok })
		now := time.Now().UnixNano()
		m.exchanges.forgetDeferrals(now - m.deferralsKept())
		for p, sa := range latest {
			active := sa.active
			c := cadences[p]
			if c == nil {
				c = &cadence{wait: 1}
				cadences[p] = c
			}
			if sa.connected {
				c.seen = now
			}
			if c.busy {
				continue
			}
			if !sa.connected {
				// Dialled for news only, backing off while dials fail.
				if active <= m.exchanges.lastRound(p) {
					continue
				}
				if c.skip > 0 {
					c.skip--
					continue
				}
			} else if asks(self, p) {
				if active > c.last {
					c.wait, c.skip = 1, 0
				}
				if c.skip > 0 {
					c.skip--
					continue
				}
			} else if last := m.exchanges.lastRound(p); (active <= last && !c.unsettled) || now-last < answerAfter*int64(m.cfg.DigestInterval) {
				continue
			}
			start(p, c, now)
		}
	}
}

// lost records that a message of group between this site and p was
// dropped, here, and has a round with p start at once (antiEntropyLoop):
// the round compares the group, settled or not, and pushes its heads if
// they differ. Waiting for the pair's next round (up to an interval, or
// answerAfter intervals on the answering side) made most of the tail of
// a write phase at 100 sites once the other members stopped pushing the
// heads of groups in flight (settling).
func (m *Manager) lost(group string, p peer.ID) {
	m.exchanges.lost(group, p)
	select {
	case m.losses <- p:
	default: // a burst of losses: the rounds under way cover them
	}
}

// lossRoundsPerInterval bounds the rounds losses start with one member:
// at most that many per DigestInterval (lossRound).
const lossRoundsPerInterval = 5

// asks reports whether self starts the periodic anti-entropy rounds of
// the pair it makes with p: the peer id that sorts first does.
func asks(self, p peer.ID) bool { return self < p }

// answerAfter is how many intervals the site that answers a pair's
// rounds waits, after the pair's last round, before it starts one for a
// change of its own: two, so that an asker running a round every
// interval, a little late, is not doubled.
const answerAfter = 2

// digestReadBuffer sizes a round's reader at each end: its frames are a
// summary and a short answer unless the groups differ (a bigger frame is
// read through it). bufio's default 4 KiB, at both ends of every round
// with every member, was 6 % of the bytes a 100-site write phase
// allocated.
const digestReadBuffer = 512

// lostRecently is how many intervals after a pair was last seen
// connected a failed dial for news is tried again at the next interval
// rather than after a doubled wait: a connection lost a moment ago is
// more likely cut by a starved host (yamux's keepalive answered late)
// than by a member gone down, and the writes made since wait for the
// next dial. At 100 in-process sites the doubled waits left entries
// unseen for 20 s after the last write (docs/scaling.md, tail27). A
// member still unreachable after that backs off as before.
const lostRecently = maxQuietRounds

// maxQuietRounds bounds the wait between two rounds with a quiet member:
// 12 intervals, a minute with the default DigestInterval.
const maxQuietRounds = 12

// roundResult is what a round with a member found.
type roundResult struct {
	// same: the summaries of the groups compared were equal.
	same bool
	// deferred counts the shared groups left out, not settled at one
	// end or the other (Config.SettleAfter): a round is due again soon.
	deferred int
}

// settle is how long a group must stay unused and unchanged before a
// round compares it: SettleAfter, at most one DigestInterval.
func (m *Manager) settle() int64 {
	return int64(min(m.cfg.SettleAfter, m.cfg.DigestInterval))
}

// linkedSince is when the newest connection to p opened (unix ns; 0: not
// connected). Announcements made before it went on a connection that
// closed since, or on none (links do not dial): they may be lost.
func (m *Manager) linkedSince(p peer.ID) int64 {
	var since int64
	for _, c := range m.cfg.Host.Network().ConnsToPeer(p) {
		since = max(since, c.Stat().Opened.UnixNano())
	}
	return since
}

// announcedNow starts the group's settle time again (Group.announced):
// this site just wrote into it, and its announcement is on the links, or
// read a member's announcement of a new delta, whose copies to the other
// members may still be on theirs. Nothing else does. A change a repair
// brought (heads pushed by a round or a connection's catch-up, the
// blocks fetched for them, a walk) is the repair's result, not a write
// in flight: when it restarted the settle time (the rule's first
// version took any use or change of the group), each repair of a group
// held its next comparisons back by another settle period, at every
// member it touched, and one group of all 10 or 20 sites converged
// 10–17 s after its last write instead of 0.7–3 s (`cheops bench
// scale`, 2026-12-04). Reads did the same for a group read often.
func (g *Group) announcedNow() { g.announced.Store(time.Now().UnixNano()) }

// settling reports whether g may be left out of a round with p now (unix
// ns): this site wrote into it or read a member's announcement of it
// within settle (announcedNow), on a connection to p open since linked
// (linkedSince), so that announcements may still be on their way; no
// message of it was lost with p; it has not been deferred with p for
// settleLimit × settle already; and the last comparison with p did not
// find it different. A group that changed before the connection opened
// (a heal, a restart) is compared at once: what was announced then never
// arrived. A group found different has its heads pushed both ways, and
// the next round (one interval later: a round that compared keeps the
// pair's pace) compares it again whatever its writes meanwhile, until
// it matches: the settle rule never holds a repair back.
//
// A group in flight to p is settling too, whatever SettleAfter says, for
// up to inFlightLimit intervals: an announcement of a new delta of it
// waits on p's link, or was written to p within that time on the
// connection open now (a stream on a live connection delivers what it
// carries; p may not have read it yet), or this site holds heads of it
// not merged yet (Group.merging). Its digest is about to change at one
// end, and comparing it now finds a difference that the announcement or
// the heads in hand remove. Under load, messages wait on the links and
// in the readers' streams, and announcements wait for a free slot
// (MaxAwake), for seconds; each round in between found their groups
// different and pushed their heads again, both ways. At 100 sites ×
// 40,000 writes that was 52,000 mismatches and 51,000 heads pushed,
// almost as many link messages as the writes' own (most of them of
// groups the asking member had not joined yet: firstAnnouncementDue). A
// message of the group with p that was dropped, at either end, still
// has it compared at once, and so does a group in flight whose last
// comparison with p found it different (its repair is not held back);
// heads in hand are merged whatever that comparison found.
func (m *Manager) settling(g *Group, p peer.ID, now, linked int64) bool {
	if g.merging() {
		return m.exchanges.mayDeferMerging(g, p, now, m.inFlightFor())
	}
	if linked > 0 && m.links.inFlight(p, g, max(linked, now-m.inFlightFor())) {
		return m.exchanges.mayDefer(g, p, now, m.inFlightFor())
	}
	settle, at := m.settle(), g.announced.Load()
	if settle <= 0 || now-at >= settle || linked == 0 || at <= linked {
		return false
	}
	return m.exchanges.mayDefer(g, p, now, settleLimit*settle)
}

// firstAnnouncementDue reports whether p, a member of g that has not
// joined it, may still be reading g's first announcement: this site
// wrote into g or read a member's announcement of a new delta of it
// within inFlightFor, the writer's message to p going out at the same
// moment. Under load, a member reads its links seconds late; the rounds
// in between found 26,000 such groups at 100 sites × 40,000 writes and
// pushed each one's heads to a member whose announcement was on its
// way. Held back for inFlightFor at most (the writer may have failed
// before it wrote to p), and not at all once a message of g with p was
// dropped at this end.
func (m *Manager) firstAnnouncementDue(g *Group, p peer.ID, now int64) bool {
	return now-g.announced.Load() < m.inFlightFor() && m.exchanges.mayDefer(g, p, now, m.inFlightFor())
}

// digestRound compares the heads of every settled group shared with p
// (every group, all set) and pushes this site's heads of the groups
// that differ; the groups not settled are deferred to a later round,
// unless p dropped a message of one of them.
func (m *Manager) digestRound(ctx context.Context, p peer.ID, all bool) (roundResult, error) {
	shared := m.shared(p)
	if len(shared) == 0 {
		return roundResult{same: true}, nil
	}
	now, linked := time.Now().UnixNano(), m.linkedSince(p)
	groups := shared[:0]
	var deferred []string
	for _, g := range shared {
		if !all && m.settling(g, p, now, linked) {
			deferred = append(deferred, g.name)
		} else {
			groups = append(groups, g)
		}
	}
	m.metrics.digestDeferred.Add(float64(len(deferred)))
	if len(groups) == 0 {
		// Every shared group has announcements in flight here. The
		// round still goes, a summary of nothing naming them (two small
		// frames): the answerer may have dropped one of them (a full
		// replica queue) and then names it as different. Sending
		// nothing left such a loss to the next round an interval
		// later: one group of all 10 or 20 sites, whose members drop
		// thousands of announcements under a burst of writes, converged
		// 4-6 s after its last write instead of about 1 s.
		m.metrics.digestRoundsDeferred.Inc()
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.FetchTimeout)
	defer cancel()
	if k, ok := m.digests.Take(p, m.digestReuse()); ok {
		res, first, err := m.roundOn(ctx, p, k, groups, deferred, all)
		if err == nil || !first || ctx.Err() != nil {
			return res, err
		}
		// The kept stream failed before its first answer: the other
		// side may have ended it (its wait ran out, it restarted). A
		// round is idempotent: run it on a new stream.
		m.log.Debug("kept digest stream failed; opening another", "peer", p, "err", err)
	}
	if m.cfg.Host.Network().Connectedness(p) != network.Connected {
		// A dial for news: this loop paces it (one per interval at
		// most), and libp2p's own backoff for the member's addresses,
		// set by a dial that failed on a starved host, would fail it
		// at once for up to a minute.
		if sw, ok := m.cfg.Host.Network().(*swarm.Swarm); ok {
			sw.Backoff().Clear(p)
		}
	}
	s, err := m.cfg.Host.NewStream(ctx, p, DigestKeptProtocol, DigestProtocol)
	if err != nil {
		return roundResult{deferred: len(deferred)}, fmt.Errorf("open digest stream: %w", err)
	}
	res, _, err := m.roundOn(ctx, p, keptstream.Stream{S: s, R: bufio.NewReaderSize(s, digestReadBuffer)}, groups, deferred, all)
	return res, err
}

// roundOn runs one round on stream k, comparing groups (deferred names
// the shared groups left out; all asks the answerer to leave out none),
// and then keeps the stream for the next round with p, when its
// protocol allows and the round ended cleanly; it is closed otherwise.
// first reports a failure before the round's first answer was read.
func (m *Manager) roundOn(ctx context.Context, p peer.ID, k keptstream.Stream, groups []*Group, deferred []string, all bool) (res roundResult, first bool, err error) {
	res.deferred = len(deferred)
	s := k.S
	keep := false
	// Closing the manager must not wait for a member that does not answer.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer func() {
		if !stop() {
			keep = false // reset: the round timed out or the manager closed
		}
		switch {
		case keep && err == nil && s.Protocol() == DigestKeptProtocol:
			_ = s.SetDeadline(time.Time{})
			k.Used = time.Now()
			m.digests.Put(p, k)
		case err != nil:
			_ = s.Reset()
		default:
			_ = s.Close()
		}
	}()
	started := time.Now().UnixNano()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	r := k.R
	ans, err := m.askDigests(s, r, digestRequest{Summary: summary(ctx, groups), Deferred: deferred, All: all})
	if err != nil {
		return res, true, err
	}
	// Recorded once answered: a kept stream that died with its
	// connection fails here, and the member, not reached, still has the
	// news this round was for (dials for news stop once a round has
	// come since the last change shared with it).
	m.exchanges.roundWithAt(p, started)
	if ans.Same {
		m.metrics.digestRounds.WithLabelValues("same").Inc()
		for _, g := range groups {
			m.exchanges.set(g, p, true)
		}
		keep = true
		res.same = true
		return res, false, nil
	}
	req := digestRequest{Digests: map[string]string{}, Processed: map[string]int{}, Deferred: deferred, All: all}
	byName := map[string]*Group{}
	names := make([]string, 0, len(groups))
	for _, g := range groups {
		d := g.digest(ctx)
		req.Digests[g.name], req.Processed[g.name] = d.heads, d.processed
		byName[g.name] = g
		names = append(names, g.name)
	}
	if !all {
		// The answerer may defer groups (settling): not those.
		req.Lost = m.exchanges.lostOf(p, names)
	}
	if ans, err = m.askDigests(s, r, req); err != nil {
		return res, false, err
	}
	keep = true
	m.metrics.digestRounds.WithLabelValues("compared").Inc()
	// The groups the answerer left out, not settled at its end.
	for _, name := range ans.Deferred {
		if _, ok := byName[name]; ok {
			delete(byName, name)
			res.deferred++
		}
	}
	differ := map[string]bool{}
	for _, name := range ans.Differ {
		if g, ok := byName[name]; ok {
			differ[name] = true
			m.metrics.digestMismatches.Inc()
			if err := g.pushHeads(ctx, p); err != nil {
				m.log.Debug("push heads after a digest mismatch", "group", name, "err", err)
			}
		} else if slices.Contains(deferred, name) {
			// A group this site deferred, of which a message was
			// dropped at the answerer: its heads go now, as a
			// mismatch's (the next round compares it, settled or not).
			if g := m.group(name); g != nil && g.member(p) {
				m.metrics.digestMismatches.Inc()
				m.exchanges.set(g, p, false)
				if err := g.pushHeads(ctx, p); err != nil {
					m.log.Debug("push heads of a deferred group lost at the answerer", "group", name, "err", err)
				}
			}
		}
	}
	for name, g := range byName {
		m.exchanges.set(g, p, !differ[name])
		if n, ok := ans.Processed[name]; ok && !differ[name] {
			m.compareProcessed(ctx, g, n)
		}
	}
	return res, false, nil
}

// askDigests sends one request of a round and reads its answer.
func (m *Manager) askDigests(s network.Stream, r *bufio.Reader, req digestRequest) (digestAnswer, error) {
	data, _ := json.Marshal(req)
	if err := writeFrameOnce(s, data); err != nil {
		_ = s.Reset()
		return digestAnswer{}, fmt.Errorf("send digests: %w", err)
	}
	frame, err := readFrame(r, maxFrame)
	if err != nil {
		return digestAnswer{}, fmt.Errorf("read digest answer: %w", err)
	}
	var ans digestAnswer
	if err := json.Unmarshal(frame, &ans); err != nil {
		m.metrics.malformed.Inc()
		return digestAnswer{}, fmt.Errorf("digest answer: %w", err)
	}
	return ans, nil
}

// serveDigests answers a member's round: the groups named that this site
// shares with it and whose digests differ get their heads pushed back
// and a repair checked.
func (m *Manager) serveDigests(s network.Stream) { m.serveDigestStream(s, false) }

// serveKeptDigests answers a member's rounds on one stream, one after the
// other, until the member ends it or sends no round for digestKeep
// (DigestKeptProtocol).
func (m *Manager) serveKeptDigests(s network.Stream) { m.serveDigestStream(s, true) }

func (m *Manager) serveDigestStream(s network.Stream, kept bool) {
	if !m.enter() {
		_ = s.Reset()
		return
	}
	defer m.wg.Done()
	defer s.Close()
	// Closing the manager must not wait for the next round.
	stop := context.AfterFunc(m.ctx, func() { _ = s.Reset() })
	defer stop()
	remote := s.Conn().RemotePeer()
	r := bufio.NewReaderSize(s, digestReadBuffer)
	for m.answerRound(s, r, remote) && kept {
		_ = s.SetDeadline(time.Now().Add(m.digestKeep()))
		if _, err := r.Peek(1); err != nil {
			return // ended by the member, or no round within digestKeep
		}
	}
}

// answerRound answers one round read from r; false when the stream
// cannot carry another (it failed, or was reset).
func (m *Manager) answerRound(s network.Stream, r *bufio.Reader, remote peer.ID) bool {
	_ = s.SetDeadline(time.Now().Add(m.cfg.FetchTimeout))
	var req digestRequest
	if !m.readFrameJSON(s, r, &req) {
		return false
	}
	m.exchanges.roundWith(remote)
	m.metrics.digestRoundsAnswered.Inc()
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.FetchTimeout)
	defer cancel()
	if req.Summary != "" && len(req.Digests) == 0 {
		groups := m.shared(remote)
		if len(req.Deferred) > 0 {
			groups = slices.DeleteFunc(groups, func(g *Group) bool { return slices.Contains(req.Deferred, g.name) })
		}
		// A group the asker deferred of which a message was dropped
		// here is not the same: the full request follows.
		same := summary(ctx, groups) == req.Summary && len(m.exchanges.lostOf(remote, req.Deferred)) == 0
		data, _ := json.Marshal(digestAnswer{Same: same})
		if err := writeFrameOnce(s, data); err != nil {
			return false
		}
		if same {
			// The asker's rounds are this site's too: its status shows
			// the exchange (of each pair, one site starts the rounds).
			for _, g := range groups {
				m.exchanges.set(g, remote, true)
			}
			return true
		}
		if req = (digestRequest{}); !m.readFrameJSON(s, r, &req) {
			return false
		}
	}
	ans := digestAnswer{Processed: map[string]int{}}
	var differ []*Group
	// The groups this site shares with the asker that its request does
	// not name: the asker has not joined them (every announcement of
	// them to it was lost). Its rounds name only the groups it has
	// joined, and of a pair only one side starts the periodic rounds:
	// unless the answering side pushes their heads, which joins them
	// there, nothing ever does while the asker's rounds keep coming.
	// A group the asker deferred, or one not settled here, is not
	// unnamed: its announcement may be on its way.
	var unnamed []*Group
	now, linked := time.Now().UnixNano(), m.linkedSince(remote)
	for _, g := range m.shared(remote) {
		if _, ok := req.Digests[g.name]; !ok && !slices.Contains(req.Deferred, g.name) && (req.All || !m.settling(g, remote, now, linked) && !m.firstAnnouncementDue(g, remote, now)) {
			unnamed = append(unnamed, g)
		}
	}
	for name, digest := range req.Digests {
		g := m.group(name)
		if g == nil {
			if slices.Contains(strings.Split(name, ","), m.cfg.Self) {
				// A group naming this site that it has not joined yet
				// (every message about it was lost): ask for its heads;
				// the push is checked against membership and joins it.
				ans.Differ = append(ans.Differ, name)
			}
			continue
		}
		if !g.member(remote) {
			// Not a group this site shares with the asker: say nothing
			// of it (a non-member learns nothing).
			continue
		}
		if !req.All && !slices.Contains(req.Lost, name) && m.settling(g, remote, now, linked) {
			// Changed here within SettleAfter: its announcements may be
			// in flight, either way. A later round compares it (unless
			// a message of it was dropped at the asker).
			ans.Deferred = append(ans.Deferred, name)
			m.metrics.digestDeferred.Inc()
			continue
		}
		match := g.digest(ctx).heads == digest
		m.exchanges.set(g, remote, match)
		if !match {
			ans.Differ = append(ans.Differ, name)
			differ = append(differ, g)
			continue
		}
		ans.Processed[name] = g.processedCount(ctx)
		if n, ok := req.Processed[name]; ok {
			m.compareProcessed(ctx, g, n)
		}
	}
	// The groups the asker deferred of which a message from or to it
	// was dropped here: the settle rule does not hold back a known
	// loss. Named as different, their heads are pushed both ways.
	for _, name := range m.exchanges.lostOf(remote, req.Deferred) {
		if g := m.group(name); g != nil && g.member(remote) {
			m.exchanges.set(g, remote, false)
			m.metrics.digestMismatches.Inc()
			ans.Differ = append(ans.Differ, name)
			differ = append(differ, g)
		}
	}
	data, _ := json.Marshal(ans)
	if err := writeFrameOnce(s, data); err != nil {
		_ = s.Reset()
		return false
	}
	for _, g := range differ {
		g.kickRepair()
		if err := g.pushHeads(ctx, remote); err != nil {
			m.log.Debug("push heads after a digest mismatch", "group", g.name, "err", err)
		}
	}
	for _, g := range unnamed {
		m.exchanges.set(g, remote, false)
		m.metrics.digestMismatches.Inc()
		if err := g.pushHeads(ctx, remote); err != nil {
			m.log.Debug("push heads of a group the asker did not name", "group", g.name, "err", err)
		}
	}
	return true
}

// GroupStatus is what an operator needs to see of one group's
// convergence.
type GroupStatus struct {
	Group  string   `json:"group"`
	Sites  []string `json:"sites"`
	Heads  []string `json:"heads"`
	Height uint64   `json:"height"`
	// Queued counts DAG blocks waiting to be merged; Fetching, fetches of
	// missing blocks in progress.
	Queued   int  `json:"queued_jobs"`
	Fetching int  `json:"fetching"`
	Dirty    bool `json:"dirty"`
	// Asleep: the group was idle and its replica is closed (it wakes on
	// the next read, write or announcement).
	Asleep bool `json:"asleep"`
	// LastHeard is when a member last sent heads or blocks of the group
	// (zero: not since this site started).
	LastHeard time.Time `json:"last_heard,omitzero"`
	// Merged counts the DAG nodes merged here (equal on members with the
	// same heads once both merged everything).
	Merged int `json:"merged"`
	// Members lists the other sites, with the last anti-entropy exchange.
	Members []MemberStatus `json:"members"`
}

// MemberStatus is this site's last exchange with one member of a group.
type MemberStatus struct {
	Site      string `json:"site"`
	Connected bool   `json:"connected"`
	// LastExchange is when the heads were last compared with it
	// (zero: not yet); DigestMatch whether they were equal then.
	LastExchange time.Time `json:"last_exchange,omitzero"`
	DigestMatch  *bool     `json:"digest_match,omitempty"`
}

// Status reports every group this site holds.
func (m *Manager) Status(ctx context.Context) []GroupStatus {
	var out []GroupStatus
	for _, g := range m.Groups() {
		out = append(out, m.statusOf(ctx, g))
	}
	slices.SortFunc(out, func(a, b GroupStatus) int {
		if a.Group < b.Group {
			return -1
		}
		if a.Group > b.Group {
			return 1
		}
		return 0
	})
	return out
}

// StatusOf is Status for the group of one site set, if this site has
// joined it: one group's state without reading every other's.
func (m *Manager) StatusOf(ctx context.Context, sites []string) (GroupStatus, bool) {
	g, err := m.existing(sites)
	if err != nil || g == nil {
		return GroupStatus{}, false
	}
	return m.statusOf(ctx, g), true
}

func (m *Manager) statusOf(ctx context.Context, g *Group) GroupStatus {
	st := g.stats(ctx)
	gs := GroupStatus{Group: g.name, Sites: slices.Clone(g.sites), Height: st.height, Queued: st.queued, Dirty: st.dirty,
		Asleep: st.asleep, Merged: g.processedCount(ctx), Heads: []string{}}
	if at := g.heard.Load(); at != 0 {
		gs.LastHeard = time.Unix(0, at).UTC()
	}
	for _, h := range st.heads {
		gs.Heads = append(gs.Heads, h.String())
	}
	slices.Sort(gs.Heads)
	gs.Fetching = g.arrivals.fetching()
	for _, p := range g.peers {
		if p == m.cfg.Host.ID() {
			continue
		}
		ms := MemberStatus{Site: m.siteOf(p), Connected: m.cfg.Host.Network().Connectedness(p) == network.Connected}
		if e, ok := m.exchanges.get(g, p); ok {
			match := e.Match
			ms.LastExchange, ms.DigestMatch = e.At, &match
		}
		gs.Members = append(gs.Members, ms)
	}
	return gs
}
