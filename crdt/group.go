package crdt

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	dag "github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/namespace"
	"github.com/ipfs/go-datastore/query"
	crdt "github.com/ipfs/go-ds-crdt"
	"github.com/ipfs/go-ds-crdt/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// Group is one replication group: the replica of the data shared by
// exactly one set of sites.
//
// Invariant (nothing leaves the group): its announcements are sent only
// to its members' links, and a link message is accepted only from a
// member of the group it names; its blocks live in its own blockstore
// namespace, are served only to its members and fetched only from its
// connected members.
type Group struct {
	m       *Manager
	name    string
	sites   []string
	peers   []peer.ID
	members map[peer.ID]bool
	bcast   *broadcaster
	blocks  blockstore.Blockstore
	store   *crdt.Datastore
	// arrivals tracks fetches in progress and the walks waiting for them.
	arrivals arrivals

	kick       chan struct{} // asks the repair loop to check now
	forced     atomic.Bool   // repair even though the replica is not marked dirty
	stopRepair context.CancelFunc
	repairDone chan struct{}
}

// Sites are the group's members.
func (g *Group) Sites() []string { return slices.Clone(g.sites) }

// Name is the group's canonical name: its sorted sites, comma-separated.
func (g *Group) Name() string { return g.name }

func groupPrefix(name string) ds.Key { return ds.NewKey("/g").ChildString(name) }

func (m *Manager) openGroup(name string, sites []string, peers []peer.ID, unclean bool) (*Group, error) {
	g := &Group{m: m, name: name, sites: sites, peers: peers, members: map[peer.ID]bool{}, kick: make(chan struct{}, 1)}
	for _, p := range peers {
		g.members[p] = true
	}
	prefix := groupPrefix(name)
	g.blocks = blockstore.NewBlockstore(namespace.Wrap(m.cfg.Datastore, prefix.ChildString("blocks")),
		// Callers check for the block first where it matters; rewriting a
		// block under its own hash is harmless.
		blockstore.NoPrefix(), blockstore.WriteThrough(true))
	g.bcast = newBroadcaster(g)
	dags := dag.NewDAGService(blockservice.New(g.blocks, exchange{g}))
	opts := crdt.DefaultOptions()
	opts.Logger = crdtLogger{m.log.With("group", name)}
	opts.RebroadcastInterval = m.cfg.RebroadcastInterval
	opts.NumWorkers = m.cfg.Workers
	opts.DAGSyncerTimeout = m.cfg.FetchTimeout
	// The group's own repair loop replaces go-ds-crdt's: it also runs
	// when a member connects, when a missing block can be fetched.
	opts.RepairInterval = 0
	// The hooks run inside go-ds-crdt's merge batch: they only queue.
	opts.PutHook = func(k ds.Key, v []byte) { m.changes.add(change{sites: g.sites, key: k.String(), value: v}) }
	opts.DeleteHook = func(k ds.Key) { m.changes.add(change{sites: g.sites, key: k.String(), deleted: true}) }
	if unclean {
		// A crash in the middle of a branch walk leaves its upper part
		// marked processed and its head unrecorded; go-ds-crdt then skips
		// that branch when its head comes again, and Repair, which walks
		// from the recorded heads, never reaches it (upstream #279).
		// Forgetting every processed mark makes the repair re-merge what
		// the heads reach (merging is idempotent) and lets the branch be
		// walked again when its head arrives.
		if err := forgetProcessed(m.ctx, m.cfg.Datastore, prefix.ChildString("crdt").ChildString(processedNamespace)); err != nil {
			g.closeNetwork()
			return nil, fmt.Errorf("crdt: group %s: %w", name, err)
		}
	}
	var err error
	g.store, err = crdt.New(m.cfg.Datastore, prefix.ChildString("crdt"), dags, g.bcast, opts)
	if err != nil {
		g.closeNetwork()
		return nil, fmt.Errorf("crdt: group %s: %w", name, err)
	}
	ctx, cancel := context.WithCancel(m.ctx)
	if unclean {
		// Upstream issue #279: a crash in the middle of a branch walk can
		// leave it half-processed. The dirty mark survives another crash
		// until a repair completes.
		m.log.Warn("unclean stop detected: the group will be repaired", "group", name)
		g.store.MarkDirty(ctx)
	}
	g.stopRepair, g.repairDone = cancel, make(chan struct{})
	go g.repairLoop(ctx)
	return g, nil
}

// repairLoop repairs the replica whenever it is marked dirty: at start,
// every RepairInterval, and when kicked (a member connected).
func (g *Group) repairLoop(ctx context.Context) {
	defer close(g.repairDone)
	// A failed repair (members still unreachable) is retried after
	// RepairRetry, doubling up to RepairInterval; a member connecting
	// kicks it at once.
	wait := g.m.cfg.RepairInterval
	retry := repairRetry
	for {
		if g.forced.Swap(false) || g.store.IsDirty(ctx) {
			start := time.Now()
			err := g.store.Repair(ctx)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				g.m.metrics.repairFailures.Inc()
				g.m.log.Warn("repair failed; retrying", "group", g.name, "in", retry, "err", err)
				wait, retry = retry, min(2*retry, g.m.cfg.RepairInterval)
			default:
				g.m.metrics.repairs.Inc()
				g.m.log.Info("repaired group", "group", g.name, "took", time.Since(start))
				wait, retry = g.m.cfg.RepairInterval, repairRetry
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-g.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// repairRetry is how soon a group whose blocks could not all be fetched
// checks for repair: a fetch cut by a partition (or failing because the
// member had not reconnected yet) marks the replica dirty, and nothing
// else would look at it before RepairInterval (seen: 30 s with catalogs
// disagreeing after a cut in the middle of concurrent writes).
const repairRetry = 500 * time.Millisecond

// repairSoon asks for a dirty check shortly: go-ds-crdt marks the replica
// dirty after the failed fetch that calls this returns.
func (g *Group) repairSoon() {
	time.AfterFunc(repairRetry, g.kickRepair)
}

// forceRepair asks for a repair now, dirty mark or not: go-ds-crdt's
// repair walks the whole DAG and merges every node not merged yet.
func (g *Group) forceRepair() {
	g.forced.Store(true)
	g.kickRepair()
}

// kickRepair asks the repair loop to check the dirty mark now.
func (g *Group) kickRepair() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

func (g *Group) closeNetwork() {
	if g.bcast != nil {
		g.bcast.close()
	}
}

func (g *Group) close() error {
	g.stopRepair()
	<-g.repairDone
	err := g.store.Close()
	g.closeNetwork()
	return err
}

// connectedMembers lists the members (not this site) with a live connection.
func (g *Group) connectedMembers() []peer.ID {
	var out []peer.ID
	for _, p := range g.peers {
		if p != g.m.cfg.Host.ID() && g.m.cfg.Host.Network().Connectedness(p) == network.Connected {
			out = append(out, p)
		}
	}
	return out
}

func (g *Group) knownHeads(ctx context.Context) []cid.Cid {
	return g.store.InternalStats(ctx).Heads
}

// encodedHeads encodes the group's heads as go-ds-crdt broadcasts them;
// nil when the group has none.
func (g *Group) encodedHeads(ctx context.Context) ([]byte, error) {
	heads := g.knownHeads(ctx)
	if len(heads) == 0 {
		return nil, nil
	}
	msg := &pb.CRDTBroadcast{}
	for _, h := range heads {
		msg.Heads = append(msg.Heads, &pb.Head{Cid: h.Bytes()})
	}
	return proto.Marshal(msg)
}

// processedNamespace is where go-ds-crdt v0.6 marks the blocks it has
// merged, under the replica's namespace.
const processedNamespace = "b"

// forgetProcessed deletes every processed-block mark under prefix.
func forgetProcessed(ctx context.Context, store ds.Batching, prefix ds.Key) error {
	res, err := store.Query(ctx, query.Query{Prefix: prefix.String(), KeysOnly: true})
	if err != nil {
		return fmt.Errorf("list processed marks: %w", err)
	}
	defer res.Close()
	batch, err := store.Batch(ctx)
	if err != nil {
		return fmt.Errorf("forget processed marks: %w", err)
	}
	for r := range res.Next() {
		if r.Error != nil {
			return fmt.Errorf("list processed marks: %w", r.Error)
		}
		if err := batch.Delete(ctx, ds.NewKey(r.Key)); err != nil {
			return fmt.Errorf("forget processed mark: %w", err)
		}
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("forget processed marks: %w", err)
	}
	return nil
}
