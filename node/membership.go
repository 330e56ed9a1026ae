package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/hashicorp/serf/coordinate"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/multiformats/go-multiaddr"

	"cheops/scope"
)

// Record is what a site says of itself on the membership topic. Pubsub's
// strict signing signs every message with the publisher's key; a record is
// accepted only when its Peer is that signer, so no site can speak for
// another.
type Record struct {
	Site    string    `json:"site"`
	Peer    peer.ID   `json:"peer"`
	Addrs   []string  `json:"addrs"`
	Started time.Time `json:"started"`
	// Coord is the site's network coordinate, once it has settled (see
	// coord.go): the others estimate RTTs between two sites from them.
	Coord *coordinate.Coordinate `json:"coord,omitempty"`
	// RTTms held the smoothed RTT to each reachable site. Earlier
	// versions send it; this one reads it and sends a coordinate.
	RTTms map[string]float64 `json:"rtt_ms,omitempty"`
}

// RecordProtocol is the stream protocol on which a site sends its record
// straight to a site it has just connected to (either side of the
// connection does): the new peer learns the site at once, without a
// publication that every site would receive. The connection's secure
// channel authenticates the sender as pubsub's signature does.
const RecordProtocol = "/cheops/membership/record/1.0.0"

// RecordExchangeProtocol is RecordProtocol both ways: the site that opens
// the stream sends its record and closes its side, the other answers with
// its own. Either side's stream then teaches both, and a site that lacks
// a peer's record (a push lost under load) asks for it after its next
// probe of that peer, instead of waiting for the peer's next publication.
const RecordExchangeProtocol = "/cheops/membership/record/1.1.0"

// Conflict is a refused claim on a site name: a peer claimed a name bound
// to another peer, or a peer bound to one name claimed another. Refused
// claims are reported here, in the log, in GET /v1/sites and /v1/health and
// in the metrics; the binding never switches (see the design note in
// bindings.go). Only trusted peers can claim anything, so a conflict is a
// misconfiguration (two agents given one --site, a reinstalled site with a
// new key) or an impostor, which an operator must look at.
type Conflict struct {
	Site string `json:"site"`
	// Holder is the peer bound to Site, if any.
	Holder   peer.ID `json:"holder,omitempty"`
	Claimant peer.ID `json:"claimant"`
	// Reason says which binding refused the claim.
	Reason string `json:"reason"`
	// At is the first refusal of this claimant for this name, Last the
	// latest; Count counts the refused records.
	At    time.Time `json:"at"`
	Last  time.Time `json:"last"`
	Count int       `json:"count"`
}

// maxRecordSize bounds a membership message: a record with a hundred
// addresses and RTTs to a thousand sites stays well under it.
const maxRecordSize = 64 << 10

func (n *Node) record() Record {
	r := Record{Site: n.cfg.Site, Peer: n.host.ID(), Started: n.started}
	for _, a := range n.host.Addrs() {
		r.Addrs = append(r.Addrs, a.String())
	}
	slices.Sort(r.Addrs)
	n.mu.Lock()
	if n.samples >= coordSettle {
		r.Coord = n.coord.GetCoordinate()
	}
	n.mu.Unlock()
	return r
}

// RecordRefresh is how many AnnounceIntervals a site goes without
// publishing its record when nothing in it changed (up to half as many
// again, at random), and so how often its coordinate reaches the sites
// that do not probe it. Every site
// receives every publication, relayed by several of its peers (at 100
// in-process sites one round of publications by all costs 24 MB): a
// coordinate republished whenever it moved, which under load is every
// interval, kept the machine busy. Sites that connect exchange records
// directly; the refresh is also a late safety net for a lost
// publication.
const RecordRefresh = 6

// SitesPullEvery is how many AnnounceIntervals pass between two asks of
// a random site for the sites it knows (see announceLoop).
const SitesPullEvery = 3

// recordChanged reports whether a record must be published before the
// refresh is due: other addresses, another start, or a first coordinate.
func recordChanged(old, cur Record) bool {
	return !slices.Equal(old.Addrs, cur.Addrs) || !old.Started.Equal(cur.Started) ||
		(old.Coord == nil) != (cur.Coord == nil)
}

// publishRecord publishes this site's current record and returns it.
func (n *Node) publishRecord(ctx context.Context) Record {
	r := n.record()
	n.publish(ctx, r)
	return r
}

func (n *Node) publish(ctx context.Context, r Record) {
	data, err := json.Marshal(r)
	if err != nil {
		n.log.Error("encode membership record", "err", err)
		return
	}
	if err := n.topic.Publish(ctx, data); err != nil && ctx.Err() == nil {
		n.log.Debug("publish membership record", "err", err)
	}
}

// decodeRecord parses and checks a membership message's payload.
func decodeRecord(data []byte, signer peer.ID) (Record, error) {
	var r Record
	if len(data) > maxRecordSize {
		return r, fmt.Errorf("record of %d bytes is over %d", len(data), maxRecordSize)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("record: %w", err)
	}
	if r.Peer != signer {
		return r, fmt.Errorf("record for peer %s signed by %s", r.Peer, signer)
	}
	if scope.CheckName("site", r.Site) != nil {
		return r, fmt.Errorf("record: bad site name %q", r.Site)
	}
	for _, a := range r.Addrs {
		if _, err := multiaddr.NewMultiaddr(a); err != nil {
			return r, fmt.Errorf("record: address %q: %w", a, err)
		}
	}
	for site, ms := range r.RTTms {
		if scope.CheckName("site", site) != nil || ms < 0 || ms > 1e7 {
			return r, fmt.Errorf("record: bad RTT %v ms to %q", ms, site)
		}
	}
	if r.Coord != nil && !validCoord(r.Coord, len(r.Coord.Vec)) {
		return r, fmt.Errorf("record: bad network coordinate")
	}
	return r, nil
}

// validateRecord rejects malformed records, records not signed by the
// peer they describe, and claims the binding table refuses. A claim on a
// free name by a free peer is bound, and written to disk, before the
// record is accepted: a binding in use has always been persisted.
func (n *Node) validateRecord(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	r, err := decodeRecord(msg.Data, msg.GetFrom())
	if err != nil {
		n.log.Warn("rejected membership record", "from", from, "err", err)
		return pubsub.ValidationReject
	}
	if !n.claim(r.Site, r.Peer) {
		return pubsub.ValidationReject
	}
	msg.ValidatorData = r
	return pubsub.ValidationAccept
}

// claim decides a record's claim of site by p: true when the name is (now)
// bound to p. A first claim is bound once written to disk; claims that
// arrive during a write wait for the next, which writes them all.
func (n *Node) claim(site string, p peer.ID) bool {
	n.bindMu.Lock()
	verdict, reason := n.bindings.check(site, p)
	switch verdict {
	case claimBound:
		n.bindMu.Unlock()
		return true
	case claimRefused:
		holder := n.bindings.byName[site].Peer
		n.bindMu.Unlock()
		n.reportConflict(site, holder, p, reason)
		return false
	case claimNew:
		n.bindings.propose(Binding{Site: site, Peer: p, Source: BoundByFirstClaim, Since: time.Now().UTC()})
	}
	n.bindMu.Unlock()
	return n.writeClaims(site, p)
}

// writeClaims writes every pending claim to BindingsFile, unless a write
// since the claim of site by p was proposed did, and reports whether the
// claim is bound. Writes are serialized by persistMu; bindMu is not held
// while the file is written, so lookups and other claims go on. A closed
// node writes nothing and binds nothing.
func (n *Node) writeClaims(site string, p peer.ID) bool {
	n.persistMu.Lock()
	defer n.persistMu.Unlock()
	if n.persistClosed {
		return false
	}
	n.bindMu.Lock()
	switch v, _ := n.bindings.check(site, p); v {
	case claimBound:
		n.bindMu.Unlock()
		return true
	case claimPending:
	default: // the write that held it failed
		n.bindMu.Unlock()
		return false
	}
	batch := n.bindings.proposed()
	all := append(n.bindings.learned(), batch...)
	n.bindMu.Unlock()
	err := saveBindings(n.cfg.DataDir, all)
	n.bindingWrites++
	n.bindMu.Lock()
	n.bindings.settle(batch, err == nil)
	n.bindMu.Unlock()
	if err != nil {
		for _, b := range batch {
			n.log.Error("could not persist a site binding; the claim is refused until it can be", "name", b.Site, "peer", b.Peer, "err", err)
		}
		return false
	}
	for _, b := range batch {
		n.log.Info("site name bound to its first claimant (persisted)", "name", b.Site, "peer", b.Peer, "file", BindingsFile)
	}
	return true
}

func (n *Node) reportConflict(site string, holder, claimant peer.ID, reason string) {
	now := time.Now().UTC()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.refusedClaims[site]++
	for i := range n.conflicts {
		if c := &n.conflicts[i]; c.Site == site && c.Claimant == claimant {
			c.Holder, c.Reason, c.Last = holder, reason, now
			c.Count++
			return
		}
	}
	n.conflicts = append(n.conflicts, Conflict{Site: site, Holder: holder, Claimant: claimant, Reason: reason, At: now, Last: now, Count: 1})
	n.log.Error("refused a peer's claim on a site name", "name", site, "claimant", claimant, "reason", reason)
}

// Conflicts lists the refused claims on site names, oldest first.
func (n *Node) Conflicts() []Conflict {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.conflicts)
}

// RefusedClaims counts, per site name, the membership records refused
// because of the bindings. The counts only grow (Forget clears the
// conflicts, not the counts).
func (n *Node) RefusedClaims() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.refusedClaims)
}

// Bindings lists every site name bound to a peer id (this site, the trust
// configuration's, the first claims), by name.
func (n *Node) Bindings() []Binding {
	n.bindMu.Lock()
	defer n.bindMu.Unlock()
	return n.bindings.all()
}

// Forget removes a binding made by first claim, on disk and in memory, so
// that the next peer to claim the name gets it. It is the operator's
// command (`cheops sites forget NAME`) for a site that was reinstalled
// with a new key; bindings of the trust configuration and this site's own
// name cannot be forgotten (ErrBoundByConfig, ErrSelfBinding), an unbound
// name is ErrNotBound, a closed node ErrClosed. The refused claims on the
// name are cleared.
func (n *Node) Forget(site string) (Binding, error) {
	n.persistMu.Lock()
	defer n.persistMu.Unlock()
	if n.persistClosed {
		return Binding{}, fmt.Errorf("forget %s: %w", site, ErrClosed)
	}
	n.bindMu.Lock()
	defer n.bindMu.Unlock()
	b, err := n.bindings.remove(site)
	if err != nil {
		return b, err
	}
	if err := saveBindings(n.cfg.DataDir, n.bindings.learned()); err != nil {
		n.bindings.put(b)
		return b, fmt.Errorf("node: forget %s: %w", site, err)
	}
	n.mu.Lock()
	if p, ok := n.bySite[site]; ok {
		delete(n.bySite, site)
		if ps, ok := n.byPeer[p]; ok && ps.site == site {
			ps.site = ""
			n.viewChangedLocked()
		}
	}
	n.conflicts = slices.DeleteFunc(n.conflicts, func(c Conflict) bool { return c.Site == site })
	n.mu.Unlock()
	n.log.Warn("site binding forgotten by the operator: the next claim binds the name", "name", site, "peer", b.Peer)
	return b, nil
}

func (n *Node) receiveRecords(ctx context.Context) {
	defer n.wg.Done()
	for {
		msg, err := n.sub.Next(ctx)
		if err != nil {
			return
		}
		r, ok := msg.ValidatorData.(Record)
		if !ok || r.Peer == n.host.ID() {
			continue
		}
		n.learn(r)
	}
}

// learn records what a site said of itself.
func (n *Node) learn(r Record) {
	// The binding may have been forgotten since the record was validated.
	n.bindMu.Lock()
	defer n.bindMu.Unlock()
	if v, _ := n.bindings.check(r.Site, r.Peer); v != claimBound {
		return
	}
	n.mu.Lock()
	ps := n.peerLocked(r.Peer)
	if r.Started.Before(ps.started) {
		n.mu.Unlock() // a late record of an earlier run
		return
	}
	if ps.site != "" && ps.site != r.Site {
		// Bindings are one to one and changed only by Forget, which
		// clears ps.site: the old name is no longer this peer's.
		delete(n.bySite, ps.site)
		ps.site = ""
	}
	if ps.site == "" {
		n.log.Info("site joined", "site", r.Site, "peer", r.Peer)
	}
	ps.site = r.Site
	ps.started = r.Started
	n.viewChangedLocked()
	ps.reported = map[string]time.Duration{}
	for site, ms := range r.RTTms {
		ps.reported[site] = time.Duration(ms * float64(time.Millisecond))
	}
	ps.coord = nil
	if validCoord(r.Coord, int(coordConfig().Dimensionality)) {
		ps.coord = r.Coord
	}
	n.bySite[r.Site] = r.Peer
	var addrs, stale []multiaddr.Multiaddr
	for _, a := range r.Addrs {
		addrs = append(addrs, multiaddr.StringCast(a))
	}
	for _, old := range ps.addrs {
		if !slices.ContainsFunc(addrs, old.Equal) {
			stale = append(stale, old)
		}
	}
	ps.addrs = addrs
	n.mu.Unlock()
	// A site's own record is the authority on its addresses: they are kept
	// until it announces others, so a site that was down for hours can
	// still be redialled.
	pstore := n.host.Peerstore()
	pstore.SetAddrs(r.Peer, stale, 0)
	pstore.AddAddrs(r.Peer, addrs, peerstore.PermanentAddrTTL)
}

// SitesProtocol is the stream protocol on which a site asks a peer for
// the sites it knows: on connecting to a bootstrap peer, or to any peer
// while it knows no other site, and from time to time (announceLoop). The answer, a JSON list of
// siteHint, only says whom to dial: a site's name and addresses are taken
// from its own record, which it sends on connecting (RecordProtocol).
const SitesProtocol = "/cheops/membership/sites/1.0.0"

// siteHint is one site of a SitesProtocol answer.
type siteHint struct {
	Site  string   `json:"site"`
	Peer  peer.ID  `json:"peer"`
	Addrs []string `json:"addrs"`
}

// maxSitesSize bounds a SitesProtocol answer: a thousand sites with a few
// addresses each.
const maxSitesSize = 1 << 20

// handleSites answers a SitesProtocol request: every site whose record
// this node has and that it does not hold down, but the asker (a site
// not probed yet is listed: the asker may reach it first).
func (n *Node) handleSites(s network.Stream) {
	from := s.Conn().RemotePeer()
	var hints []siteHint
	n.mu.Lock()
	for p, ps := range n.byPeer {
		if p == from || ps.site == "" || ps.state() == scope.Down {
			continue
		}
		h := siteHint{Site: ps.site, Peer: p}
		for _, a := range ps.addrs {
			h.Addrs = append(h.Addrs, a.String())
		}
		hints = append(hints, h)
	}
	n.mu.Unlock()
	data, err := json.Marshal(hints)
	if err != nil {
		_ = s.Reset()
		return
	}
	_ = s.SetWriteDeadline(time.Now().Add(n.probeTimeout(false)))
	if _, err := s.Write(data); err != nil {
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// pullSites asks p for the sites it knows (SitesProtocol) and adds the
// trusted ones this node did not know: each is probed, so dialled, at
// the next round, and sends its record on connecting. It sends how many
// it added on pulled, if there is room.
func (n *Node) pullSites(ctx context.Context, p peer.ID, pulled chan<- int) {
	defer n.wg.Done()
	added := 0
	defer func() {
		select {
		case pulled <- added:
		default:
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, n.probeTimeout(false))
	defer cancel()
	s, err := n.host.NewStream(network.WithNoDial(ctx, "membership sites"), p, SitesProtocol)
	if err != nil {
		n.log.Debug("ask for the sites", "peer", p, "err", err)
		return
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = s.SetReadDeadline(deadline)
	}
	_ = s.CloseWrite()
	data, err := io.ReadAll(io.LimitReader(s, maxSitesSize+1))
	if err != nil || len(data) > maxSitesSize {
		_ = s.Reset()
		n.log.Debug("ask for the sites", "peer", p, "err", err, "bytes", len(data))
		return
	}
	_ = s.Close()
	var hints []siteHint
	if err := json.Unmarshal(data, &hints); err != nil {
		n.log.Warn("bad answer to a sites request", "peer", p, "err", err)
		return
	}
	self := n.host.ID()
	for _, h := range hints {
		if h.Peer == self || h.Peer.Validate() != nil || !n.gater.allowed(h.Peer) {
			continue
		}
		var addrs []multiaddr.Multiaddr
		for _, a := range h.Addrs {
			if ma, err := multiaddr.NewMultiaddr(a); err == nil {
				addrs = append(addrs, ma)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		n.mu.Lock()
		_, known := n.byPeer[h.Peer]
		if !known {
			n.peerLocked(h.Peer)
			added++
		}
		n.mu.Unlock()
		if !known {
			// Until its record replaces them (learn).
			n.host.Peerstore().AddAddrs(h.Peer, addrs, peerstore.PermanentAddrTTL)
		}
	}
	n.log.Debug("asked for the sites", "peer", p, "sites", len(hints), "new", added)
}

// hintedLocked takes another site's suspicions, from a probe answer:
// each suspected site this node holds healthy is probed at its next round.
// The hint changes no state (see schedule.go).
func (n *Node) hintedLocked(suspects []string) {
	for _, site := range suspects {
		p, ok := n.bySite[site]
		if !ok || site == n.cfg.Site {
			continue
		}
		if ps, ok := n.byPeer[p]; ok && ps.need() == needNothing {
			ps.flagged = true
		}
	}
}

// handleRecord takes a record a site sent straight after connecting (see
// RecordProtocol), with the checks of validateRecord: the record must be
// the sender's own, and its claim must agree with the bindings. On
// RecordExchangeProtocol it answers with this site's record.
func (n *Node) handleRecord(s network.Stream) {
	from := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(n.probeTimeout(false)))
	data, err := io.ReadAll(io.LimitReader(s, maxRecordSize+1))
	if err != nil {
		_ = s.Reset()
		n.log.Debug("read a pushed membership record", "from", from, "err", err)
		return
	}
	if s.Protocol() == RecordExchangeProtocol {
		if err := n.writeRecord(s); err != nil {
			_ = s.Reset()
			n.log.Debug("answer a membership record", "to", from, "err", err)
		}
	}
	_ = s.Close()
	n.takeRecord(from, data)
}

// takeRecord learns the record from sent, if it passes validateRecord's
// checks.
func (n *Node) takeRecord(from peer.ID, data []byte) {
	r, err := decodeRecord(data, from)
	if err != nil {
		n.log.Warn("rejected membership record", "from", from, "err", err)
		return
	}
	if n.claim(r.Site, r.Peer) {
		n.learn(r)
	}
}

func (n *Node) writeRecord(s network.Stream) error {
	data, err := json.Marshal(n.record())
	if err != nil {
		return fmt.Errorf("encode membership record: %w", err)
	}
	_, err = s.Write(data)
	return err
}

// pushRecord exchanges records with p (RecordExchangeProtocol; to a site
// of an earlier version, only sends this site's, on RecordProtocol), over
// a connection open now (never dialling a new one): on connecting, either
// side, and after a probe of a peer whose record has not arrived.
func (n *Node) pushRecord(ctx context.Context, p peer.ID) {
	defer n.wg.Done()
	n.exchangeRecords(ctx, p)
}

func (n *Node) exchangeRecords(ctx context.Context, p peer.ID) {
	ctx, cancel := context.WithTimeout(ctx, n.probeTimeout(false))
	defer cancel()
	s, err := n.host.NewStream(network.WithNoDial(ctx, "membership record"), p, RecordExchangeProtocol, RecordProtocol)
	if err != nil {
		n.log.Debug("push membership record", "peer", p, "err", err)
		return
	}
	if deadline, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(deadline)
	}
	if err := n.writeRecord(s); err != nil {
		_ = s.Reset()
		n.log.Debug("push membership record", "peer", p, "err", err)
		return
	}
	if s.Protocol() != RecordExchangeProtocol {
		_ = s.Close()
		return
	}
	_ = s.CloseWrite()
	data, err := io.ReadAll(io.LimitReader(s, maxRecordSize+1))
	if err != nil {
		_ = s.Reset()
		n.log.Debug("read a peer's membership record", "peer", p, "err", err)
		return
	}
	_ = s.Close()
	n.takeRecord(p, data)
}

// askRecordLocked starts a record exchange with p after a probe it
// answered (not its first), when its record has not arrived (its push
// was lost, and its next publication may be minutes away), unless one is
// in progress. The asks of one peer are spaced from ProbeInterval,
// doubling up to RecordRefresh AnnounceIntervals: a peer whose claim the
// bindings refuse (its record never takes) is not asked every round.
func (n *Node) askRecordLocked(ctx context.Context, p peer.ID, ps *peerState) {
	now := time.Now()
	if ps.site != "" || ps.asking || now.Before(ps.askNext) {
		return
	}
	ps.askWait = min(max(2*ps.askWait, n.cfg.ProbeInterval), RecordRefresh*n.cfg.AnnounceInterval)
	ps.asking, ps.askNext = true, now.Add(ps.askWait)
	n.stats.recordAsks.Add(1)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.exchangeRecords(ctx, p)
		n.mu.Lock()
		ps.asking = false
		n.mu.Unlock()
	}()
}

// joiningThrough reports whether this node should ask p for the sites it
// knows: p is a bootstrap peer, or this node knows no other site yet.
func (n *Node) joiningThrough(p peer.ID) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ps, ok := n.byPeer[p]
	return (ok && ps.bootstrap) || len(n.bySite) <= 1
}

// announceLoop sends this site's record straight to every site that
// connects (pushRecord), which is how a new peer learns this site, and
// asks a bootstrap peer for the sites it knows (pullSites) on connecting
// to it. Every AnnounceInterval it publishes the record if it changed
// (see recordChanged and RecordRefresh). It asks one site it reaches, at
// random, for the sites that one knows every SitesPullEvery intervals,
// and a ProbeInterval after an ask that taught it sites: sites that
// joined at the same moment through different peers find each other so
// (memberlist's push-pull does the same), within a few probe intervals
// while the cluster forms.
//
// Nothing is published per connection: a publication reaches every site,
// and one per connection cost O(N²) publications when N sites started
// together.
func (n *Node) announceLoop(ctx context.Context, connected <-chan peer.ID) {
	defer n.wg.Done()
	tick := time.NewTicker(n.cfg.AnnounceInterval)
	defer tick.Stop()
	var refresh time.Time // when the record is due again
	var last Record
	pullEvery := SitesPullEvery * n.cfg.AnnounceInterval
	pull := time.NewTimer(pullEvery)
	defer pull.Stop()
	pulled := make(chan int, 8)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r := n.record()
			if now := time.Now(); recordChanged(last, r) || !now.Before(refresh) {
				n.publish(ctx, r)
				// Up to half as late again, at random: sites that started
				// together would otherwise all publish at once.
				// Stretched on a starved site (awareness.go): every
				// publication is verified by every site.
				every := n.stretched(RecordRefresh * n.cfg.AnnounceInterval)
				last, refresh = r, now.Add(every+rand.N(every/2))
			}
		case <-pull.C:
			if p, ok := n.randomReachable(); ok {
				n.wg.Add(1)
				go n.pullSites(ctx, p, pulled)
			} else {
				pull.Reset(n.stretched(pullEvery))
			}
		case added := <-pulled:
			if added > 0 {
				pull.Reset(n.cfg.ProbeInterval)
			} else {
				pull.Reset(n.stretched(pullEvery))
			}
		case p := <-connected:
			n.wg.Add(1)
			go n.pushRecord(ctx, p)
			if n.joiningThrough(p) {
				n.wg.Add(1)
				go n.pullSites(ctx, p, pulled)
			}
		}
	}
}

// randomReachable picks a connected site that is up, at random.
func (n *Node) randomReachable() (peer.ID, bool) {
	n.mu.Lock()
	var up []peer.ID
	for p, ps := range n.byPeer {
		if ps.site != "" && ps.state() == scope.Up {
			up = append(up, p)
		}
	}
	n.mu.Unlock()
	for len(up) > 0 {
		i := rand.IntN(len(up))
		if n.host.Network().Connectedness(up[i]) == network.Connected {
			return up[i], true
		}
		up = slices.Delete(up, i, i+1)
	}
	return "", false
}
