package node

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/multiformats/go-multiaddr"
)

// Record is what a site says of itself on the membership topic. Pubsub's
// strict signing signs every message with the publisher's key; a record is
// accepted only when its Peer is that signer, so no site can speak for
// another.
type Record struct {
	Site    string             `json:"site"`
	Peer    peer.ID            `json:"peer"`
	Addrs   []string           `json:"addrs"`
	Started time.Time          `json:"started"`
	RTTms   map[string]float64 `json:"rtt_ms,omitempty"` // smoothed RTT to each reachable site
}

// Conflict is a site name claimed by a second peer id.
//
// Design note — first claim wins: each site keeps the first peer id it
// learned for a name and refuses any other peer's record for that name,
// reporting it here, in the log, in GET /v1/sites and in the metrics. It
// never switches: a name that silently moved to another key would route
// requests and catalog data to whoever claimed it last. Only trusted peers
// can claim anything, so a conflict is a misconfiguration (two agents given
// one --site) that an operator must fix.
type Conflict struct {
	Site     string    `json:"site"`
	Holder   peer.ID   `json:"holder"`
	Claimant peer.ID   `json:"claimant"`
	At       time.Time `json:"at"`
}

// maxRecordSize bounds a membership message: a record with a hundred
// addresses and RTTs to a thousand sites stays well under it.
const maxRecordSize = 64 << 10

func (n *Node) record() Record {
	r := Record{Site: n.cfg.Site, Peer: n.host.ID(), Started: n.started, RTTms: map[string]float64{}}
	for _, a := range n.host.Addrs() {
		r.Addrs = append(r.Addrs, a.String())
	}
	n.mu.Lock()
	for _, ps := range n.byPeer {
		if ps.site != "" && ps.rtt > 0 && ps.state().Reachable() {
			r.RTTms[ps.site] = float64(ps.rtt) / float64(time.Millisecond)
		}
	}
	n.mu.Unlock()
	return r
}

func (n *Node) publishRecord(ctx context.Context) {
	data, err := json.Marshal(n.record())
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
	if ValidSiteName(r.Site) != nil {
		return r, fmt.Errorf("record: bad site name %q", r.Site)
	}
	for _, a := range r.Addrs {
		if _, err := multiaddr.NewMultiaddr(a); err != nil {
			return r, fmt.Errorf("record: address %q: %w", a, err)
		}
	}
	for site, ms := range r.RTTms {
		if ValidSiteName(site) != nil || ms < 0 || ms > 1e7 {
			return r, fmt.Errorf("record: bad RTT %v ms to %q", ms, site)
		}
	}
	return r, nil
}

// validateRecord rejects malformed records, records not signed by the
// peer they describe, and a second peer's claim on a known site name.
func (n *Node) validateRecord(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	r, err := decodeRecord(msg.Data, msg.GetFrom())
	if err != nil {
		n.log.Warn("rejected membership record", "from", from, "err", err)
		return pubsub.ValidationReject
	}
	n.mu.Lock()
	holder, known := n.bySite[r.Site]
	n.mu.Unlock()
	if known && holder != r.Peer {
		n.reportConflict(r.Site, holder, r.Peer)
		return pubsub.ValidationReject
	}
	msg.ValidatorData = r
	return pubsub.ValidationAccept
}

func (n *Node) reportConflict(site string, holder, claimant peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.conflicts {
		if c.Site == site && c.Claimant == claimant {
			return
		}
	}
	n.conflicts = append(n.conflicts, Conflict{Site: site, Holder: holder, Claimant: claimant, At: time.Now().UTC()})
	n.log.Error("site name claimed by two peers; keeping the first claim", "site", site, "holder", holder, "claimant", claimant)
}

// Conflicts lists the refused claims on site names, oldest first.
func (n *Node) Conflicts() []Conflict {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.conflicts)
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
	n.mu.Lock()
	if holder, ok := n.bySite[r.Site]; ok && holder != r.Peer {
		// Two claims passed validation concurrently; the first learned stands.
		n.mu.Unlock()
		n.reportConflict(r.Site, holder, r.Peer)
		return
	}
	ps := n.peerLocked(r.Peer)
	if r.Started.Before(ps.started) {
		n.mu.Unlock() // a late record of an earlier run
		return
	}
	if ps.site != "" && ps.site != r.Site {
		if !r.Started.After(ps.started) {
			n.mu.Unlock()
			n.log.Warn("peer claims a second site name; keeping the first", "peer", r.Peer, "site", ps.site, "claim", r.Site)
			return
		}
		// A new run of the same peer under a new name: a renamed site.
		n.log.Warn("site renamed", "peer", r.Peer, "from", ps.site, "to", r.Site)
		delete(n.bySite, ps.site)
		ps.site = ""
	}
	if ps.site == "" {
		n.log.Info("site joined", "site", r.Site, "peer", r.Peer)
	}
	ps.site = r.Site
	ps.started = r.Started
	ps.reported = map[string]time.Duration{}
	for site, ms := range r.RTTms {
		ps.reported[site] = time.Duration(ms * float64(time.Millisecond))
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

// announceLoop publishes this site's record periodically, and soon after
// a peer connects. Messages sent in the first moments of a new connection
// can be lost before the peer's subscription is known, so the record is
// sent again a little later.
func (n *Node) announceLoop(ctx context.Context, connected <-chan peer.ID) {
	defer n.wg.Done()
	tick := time.NewTicker(n.cfg.AnnounceInterval)
	defer tick.Stop()
	soon := time.NewTimer(0)
	defer soon.Stop()
	var later []time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			n.publishRecord(ctx)
		case <-connected:
			now := time.Now()
			later = append(later, now.Add(300*time.Millisecond), now.Add(1500*time.Millisecond))
			slices.SortFunc(later, time.Time.Compare)
			soon.Reset(time.Until(later[0]))
		case <-soon.C:
			n.publishRecord(ctx)
			now := time.Now()
			rest := later[:0]
			for _, at := range later {
				if at.After(now) {
					rest = append(rest, at)
				}
			}
			later = rest
			if len(later) > 0 {
				soon.Reset(time.Until(later[0]))
			}
		}
	}
}
