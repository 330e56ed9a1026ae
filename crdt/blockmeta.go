package crdt

import (
	"context"
	"sync"

	"github.com/ipfs/boxo/blockstore"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"google.golang.org/protobuf/encoding/protowire"
)

// blockMeta is what the walks of this package (the block server's,
// knownSample's) need of a DAG block: its links and its height (the
// priority of the delta it carries).
type blockMeta struct {
	links  []cid.Cid
	height uint64
}

// parseBlock reads a block's links and height. A block is a dag-pb node
// (links: field 2, each a PBLink whose field 1 is the linked CID; data:
// field 1) whose data is a go-ds-crdt delta (priority: field 3). Only
// those fields are read: the delta's elements, which hold the values
// (most of a block's bytes), are skipped, not decoded. (Decoding whole
// blocks to learn their heights was a tenth of an agent's CPU in the
// first second of a heal.) ok is false for a block that is not such a
// node; a delta that cannot be read has height 0.
func parseBlock(raw []byte) (m blockMeta, ok bool) {
	var data []byte
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return blockMeta{}, false
		}
		raw = raw[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, raw); n < 0 {
				return blockMeta{}, false
			}
			raw = raw[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(raw)
		if n < 0 {
			return blockMeta{}, false
		}
		raw = raw[n:]
		switch num {
		case 1:
			data = v
		case 2:
			c, err := linkCid(v)
			if err != nil {
				return blockMeta{}, false
			}
			m.links = append(m.links, c)
		}
	}
	m.height = deltaPriority(data)
	return m, true
}

// linkCid reads the hash (field 1) of a dag-pb PBLink.
func linkCid(link []byte) (cid.Cid, error) {
	for len(link) > 0 {
		num, typ, n := protowire.ConsumeTag(link)
		if n < 0 {
			return cid.Undef, protowire.ParseError(n)
		}
		link = link[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(link)
			if n < 0 {
				return cid.Undef, protowire.ParseError(n)
			}
			return cid.Cast(v)
		}
		if n = protowire.ConsumeFieldValue(num, typ, link); n < 0 {
			return cid.Undef, protowire.ParseError(n)
		}
		link = link[n:]
	}
	return cid.Undef, cid.ErrCidTooShort
}

// deltaPriority reads the priority (field 3, a varint) of an encoded
// go-ds-crdt delta, skipping its elements; 0 when there is none.
func deltaPriority(delta []byte) uint64 {
	var prio uint64
	for len(delta) > 0 {
		num, typ, n := protowire.ConsumeTag(delta)
		if n < 0 {
			return 0
		}
		delta = delta[n:]
		if num == 3 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(delta)
			if n < 0 {
				return 0
			}
			prio, delta = v, delta[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, delta); n < 0 {
			return 0
		}
		delta = delta[n:]
	}
	return prio
}

// maxMetaCache bounds the block metas a group keeps (metaCache); the
// cache starts over when full. 2048 covers the blocks within
// maxKnownDepth of the heads of a group that several members wrote to
// during a partition, for about 200 KiB.
const maxMetaCache = 2048

// metaCache keeps the metas of a group's blocks that its walks read or
// that were written: blocks never change, so a meta once read stays
// true. knownSample walks the same top of the DAG at every fetch of a
// heal (and again at the next heal, below the blocks written since), and
// the block server the same blocks for every member that asks: without
// it each walk read every block again from the datastore (up to
// maxKnownReads per fetch). It keeps nothing while the group sleeps (a
// site may be in thousands of groups, most of them asleep).
type metaCache struct {
	mu sync.Mutex
	on bool
	m  map[cid.Cid]blockMeta
}

func (mc *metaCache) get(c cid.Cid) (blockMeta, bool) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	m, ok := mc.m[c]
	return m, ok
}

func (mc *metaCache) put(c cid.Cid, m blockMeta) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if !mc.on {
		return
	}
	if mc.m == nil || len(mc.m) >= maxMetaCache {
		mc.m = make(map[cid.Cid]blockMeta)
	}
	mc.m[c] = m
}

// enable starts keeping metas (the group woke); disable forgets them and
// stops (it sleeps).
func (mc *metaCache) enable() {
	mc.mu.Lock()
	mc.on = true
	mc.mu.Unlock()
}

func (mc *metaCache) disable() {
	mc.mu.Lock()
	mc.on, mc.m = false, nil
	mc.mu.Unlock()
}

// blockMeta returns the meta of a block this site holds, from the cache
// or read from the blockstore; false when it does not hold it.
func (g *Group) blockMeta(ctx context.Context, c cid.Cid) (blockMeta, bool) {
	if m, ok := g.metas.get(c); ok {
		return m, true
	}
	b, err := g.blocks().Get(ctx, c)
	if err != nil {
		return blockMeta{}, false
	}
	m, _ := parseBlock(b.RawData())
	g.metas.put(c, m)
	return m, true
}

// metaBlockstore is a group's blockstore that notes in the group's meta
// cache the links and height of every block written to it: this site's
// own deltas, the blocks members inline in their announcements, the
// blocks fetched. The walks of the next block request or answer then
// read none of the blocks written since the last one from the datastore
// (after a partition, the sample's walk starts down through the blocks
// this side wrote meanwhile).
type metaBlockstore struct {
	blockstore.Blockstore
	metas *metaCache
}

func (b metaBlockstore) Put(ctx context.Context, blk blocks.Block) error {
	if err := b.Blockstore.Put(ctx, blk); err != nil {
		return err
	}
	b.note(blk)
	return nil
}

func (b metaBlockstore) PutMany(ctx context.Context, blks []blocks.Block) error {
	if err := b.Blockstore.PutMany(ctx, blks); err != nil {
		return err
	}
	for _, blk := range blks {
		b.note(blk)
	}
	return nil
}

func (b metaBlockstore) note(blk blocks.Block) {
	m, _ := parseBlock(blk.RawData())
	b.metas.put(blk.Cid(), m)
}
