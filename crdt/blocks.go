package crdt

import (
	"bufio"
	"container/heap"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-ds-crdt/pb"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"
)

// Protocols of this package.
const (
	// BlockProtocol serves a group's DAG blocks to the group's members.
	//
	// The asker sends one frame, a JSON blockRequest naming the group, the
	// wanted CIDs and blocks it holds (its heads and a sample below them,
	// see knownSample). The server answers with the wanted blocks and
	// then their ancestors, highest first, as pairs of frames (CID,
	// block), and ends with an empty frame. It sends no block the asker
	// named nor any ancestor of one, nor past a block the asker reports it
	// holds: while it reads the answer, the asker sends back one frame
	// with the CID of each received block it already had, so that a server
	// walking down into history the asker shares stops within a round
	// trip. (The wire format is that of earlier versions: an older server
	// sends more blocks the asker holds, never fewer it lacks.) A peer
	// that is not a member of the group gets the stream reset and nothing
	// else.
	BlockProtocol protocol.ID = "/cheops/crdt/blocks/2.0.0"
)

// Limits of the wire protocols: a request or heads push over maxFrame, or
// a block over maxBlock, ends the stream.
const (
	maxFrame = 1 << 20
	maxBlock = 4 << 20
	// maxHaves bounds the "I have it" reports of one answer: past that
	// many, the asker has said enough for the server to prune.
	maxHaves = 4096
	// putBatch is how many received blocks are written at once at most.
	putBatch = 256
	// flushAfter is how many bytes of an answer the block server buffers
	// at most before it writes them out.
	flushAfter = 4 << 10
)

// blockRequest asks for blocks of one group. Known lists CIDs the asker
// holds (its heads): the server sends no ancestor past them.
type blockRequest struct {
	Group string   `json:"group"`
	Want  []string `json:"want"`
	Known []string `json:"known,omitempty"`
}

// groupClaim is a group as a member names it to this site: its sites and
// their peer ids, checked by joinClaimed before this site joins it.
type groupClaim struct {
	Group string
	Sites []string
	Peers []peer.ID
}

// writeFrameOnce writes one frame with a single Write, for a stream
// written without a buffer: each Write on a stream is a frame of its own
// on the connection (a yamux header, a TLS record, a system call), and
// writeFrame's two made an anti-entropy round's 4 frames 8.
func writeFrameOnce(w io.Writer, b []byte) error {
	buf := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(b)), uint64(len(b)))
	_, err := w.Write(append(buf, b...))
	return err
}

// writeFrame writes one frame: its length, then its bytes (two writes:
// for a buffered writer).
func writeFrame(w io.Writer, b []byte) error {
	var n [binary.MaxVarintLen64]byte
	if _, err := w.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// readFrame reads one frame; io.EOF means the input ended cleanly before
// it.
func readFrame(r *bufio.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("frame of %d bytes is over the limit of %d", n, limit)
	}
	b := make([]byte, n)
	if _, err = io.ReadFull(r, b); err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return b, err
}

// cidSet is a set of CIDs safe for concurrent use.
type cidSet struct {
	mu  sync.Mutex
	set map[cid.Cid]struct{}
}

func (s *cidSet) add(c cid.Cid) {
	s.mu.Lock()
	s.set[c] = struct{}{}
	s.mu.Unlock()
}

func (s *cidSet) has(c cid.Cid) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.set[c]
	return ok
}

// serveBlocks answers a block request, only for a member of the group.
func (m *Manager) serveBlocks(s network.Stream) {
	if !m.enter() {
		_ = s.Reset()
		return
	}
	defer m.wg.Done()
	remote := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(m.cfg.FetchTimeout))
	r := bufio.NewReader(s)
	frame, err := readFrame(r, maxFrame)
	if err != nil {
		_ = s.Reset()
		return
	}
	var req blockRequest
	if err := json.Unmarshal(frame, &req); err != nil {
		m.log.Warn("malformed block request", "peer", remote, "err", err)
		m.metrics.malformed.Inc()
		_ = s.Reset()
		return
	}
	g := m.group(req.Group)
	if g == nil || !g.member(remote) {
		// Same answer whether the group exists here or not: a non-member
		// learns nothing.
		m.log.Warn("refused block request from a non-member", "peer", remote, "group", req.Group)
		m.metrics.refused.Inc()
		_ = s.Reset()
		return
	}
	known := &cidSet{set: map[cid.Cid]struct{}{}}
	for _, k := range req.Known {
		if c, err := cid.Decode(k); err == nil {
			known.add(c)
		}
	}
	var wants []cid.Cid
	for _, want := range req.Want {
		c, err := cid.Decode(want)
		if err != nil {
			m.metrics.malformed.Inc()
			_ = s.Reset()
			return
		}
		wants = append(wants, c)
	}

	// The asker's reports of blocks it already held.
	haves := make(chan struct{})
	go func() {
		defer close(haves)
		for range maxHaves {
			f, err := readFrame(r, maxFrame)
			if err != nil {
				return
			}
			if c, err := cid.Cast(f); err == nil {
				known.add(c)
			}
		}
	}()
	defer func() { <-haves }()

	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.FetchTimeout)
	defer cancel()
	w := bufio.NewWriterSize(s, 64<<10)
	nblocks, nbytes := 0, 0
	defer func() {
		m.metrics.blockBytesSent.WithLabelValues(m.siteOf(remote)).Add(float64(nbytes))
		m.metrics.blocksSent.Add(float64(nblocks))
	}()
	walk := newServeWalk(ctx, g, known)
	for _, c := range wants {
		walk.enqueue(c, cid.Undef, false)
	}
	for nblocks < m.cfg.MaxPushBlocks && nbytes < m.cfg.MaxPushBytes {
		b := walk.next()
		if b == nil {
			break
		}
		nblocks++
		nbytes += len(b.RawData())
		if writeFrame(w, b.Cid().Bytes()) != nil || writeFrame(w, b.RawData()) != nil {
			_ = s.Reset()
			return
		}
		// The asker's "I have it" report can stop the walk only once the
		// block it names has reached it: a block kept in the write buffer
		// until 64 KiB followed (a few hundred operations) let the walk
		// send that much history below what the request's known blocks
		// stop.
		if w.Buffered() >= flushAfter && w.Flush() != nil {
			_ = s.Reset()
			return
		}
	}
	if writeFrame(w, nil) != nil || w.Flush() != nil {
		_ = s.Reset()
		return
	}
	// Close stops the haves reader as well (both directions).
	_ = s.Close()
}

// fetch asks one member for blocks and stores every verified block it
// sends back in the group's blockstore. It returns how many new blocks it
// stored. The caller holds the group's fetch claim (arrivals.claim).
func (g *Group) fetch(ctx context.Context, p peer.ID, want []cid.Cid) (int, error) {
	m := g.m
	m.metrics.fetches.Inc()
	m.fetchActive()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.FetchTimeout)
	defer cancel()
	s, err := m.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "crdt"), p, BlockProtocol)
	if err != nil {
		return 0, fmt.Errorf("open block stream to %s: %w", p, err)
	}
	// A cancelled fetch must not leave the stream blocked in a read.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	req := blockRequest{Group: g.name}
	for _, c := range want {
		req.Want = append(req.Want, c.String())
	}
	for _, h := range g.knownSample(ctx) {
		req.Known = append(req.Known, h.String())
	}
	data, _ := json.Marshal(req)
	w := bufio.NewWriter(s)
	if err := writeFrame(w, data); err != nil || w.Flush() != nil {
		_ = s.Reset()
		return 0, fmt.Errorf("send block request to %s: %w", p, err)
	}
	r := bufio.NewReader(s)
	site := m.siteOf(p)
	stored, haves := 0, 0
	var pending []blocks.Block
	// Blocks are written in batches, each announced to the walks waiting
	// for them, so that the replica applies the first while the rest of
	// the answer arrives.
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		if err := g.blocks().PutMany(ctx, pending); err != nil {
			return fmt.Errorf("store blocks: %w", err)
		}
		m.fetchActive()
		for _, b := range pending {
			g.arrivals.arrived(b.Cid())
		}
		stored += len(pending)
		m.metrics.blocksFetched.Add(float64(len(pending)))
		pending = pending[:0]
		return nil
	}
	fail := func(err error) (int, error) {
		_ = s.Reset()
		if ferr := flush(); ferr != nil {
			err = errors.Join(err, ferr)
		}
		return stored, err
	}
	for {
		cb, err := readFrame(r, maxFrame)
		if err != nil {
			return fail(fmt.Errorf("read block answer from %s: %w", p, err))
		}
		if len(cb) == 0 {
			break
		}
		c, err := cid.Cast(cb)
		if err != nil {
			m.metrics.malformed.Inc()
			return fail(fmt.Errorf("bad cid from %s: %w", p, err))
		}
		raw, err := readFrame(r, maxBlock)
		if err != nil {
			return fail(fmt.Errorf("read block from %s: %w", p, err))
		}
		b, err := verifiedBlock(c, raw)
		if err != nil {
			m.log.Warn("dropped a block whose hash does not match", "peer", p, "cid", c, "err", err)
			m.metrics.malformed.Inc()
			return fail(err)
		}
		m.metrics.blockBytesReceived.WithLabelValues(site).Add(float64(len(raw)))
		if had, _ := g.blocks().Has(ctx, c); had {
			m.metrics.duplicateBlocks.Inc()
			// Tell the server, so that it stops descending here. The
			// server may have finished already: a failed write is fine.
			if haves < maxHaves {
				haves++
				if writeFrame(w, c.Bytes()) == nil {
					_ = w.Flush()
				}
			}
			continue
		}
		pending = append(pending, b)
		if len(pending) >= putBatch || r.Buffered() == 0 {
			if err := flush(); err != nil {
				return fail(err)
			}
		}
	}
	_ = s.Close()
	if err := flush(); err != nil {
		return stored, err
	}
	m.metrics.lastSync.WithLabelValues(site).SetToCurrentTime()
	g.heard.Store(time.Now().UnixNano())
	return stored, nil
}

// Bounds of knownSample: how far below the highest head it samples, how
// many blocks it reads and how many it names at most.
const (
	maxKnownDepth  = 128
	maxKnownReads  = 512
	maxKnownBlocks = 256
)

// knownSample lists, for a block request, this site's heads of the group
// and, for each depth d of 1, 2, 4, … up to maxKnownDepth below the
// highest head, the blocks where the paths down from the heads cross
// height H-d: every path from the heads down passes through one of them,
// so a server whose walk reaches history this site holds meets one of
// them, whichever path it came by, and stops (see serveWalk). After a
// partition the asker's heads are its own side's writes, which the server
// does not hold, so the heads alone stop no walk: the server went down
// through the split point into the history both sides share, and every
// block of a 300-block history was sent again
// (TestHealSendsLittleSharedHistory, TestHealSendsLittleBranchyHistory).
// With the sample the walk stops at most about as far below the split
// point as this site wrote above it. Read from this site's blockstore
// only, at most maxKnownReads blocks.
func (g *Group) knownSample(ctx context.Context) []cid.Cid {
	heads := g.knownHeads(ctx)
	key := headsKey(heads)
	if c := g.lastSample.Load(); c != nil && c.heads == key {
		// The fetches of a heal start together, before the heads move.
		return c.sample
	}
	out := g.sampleBelow(ctx, heads)
	g.lastSample.Store(&knownSampleCache{heads: key, sample: out})
	return out
}

// knownSampleCache is a known sample and the heads it was taken from.
type knownSampleCache struct {
	heads  string
	sample []cid.Cid
}

// headsKey names a set of heads, whatever their order.
func headsKey(heads []cid.Cid) string {
	keys := make([]string, len(heads))
	for i, h := range heads {
		keys[i] = h.KeyString()
	}
	slices.Sort(keys)
	return strings.Join(keys, "")
}

// sampleBelow computes the known sample of heads (see knownSample).
func (g *Group) sampleBelow(ctx context.Context, heads []cid.Cid) []cid.Cid {
	out := slices.Clone(heads)
	walk := newServeWalk(ctx, g, &cidSet{set: map[cid.Cid]struct{}{}})
	for _, h := range heads {
		walk.enqueue(h, cid.Undef, false)
	}
	if walk.queue.Len() == 0 {
		return out
	}
	top := walk.queue[0].height // the heap's first: the highest
	named := cid.NewSet()
	for _, h := range heads {
		named.Add(h)
	}
	reads := 0
	for walk.queue.Len() > 0 && reads < maxKnownReads && len(out) < maxKnownBlocks {
		it := heap.Pop(&walk.queue).(*walkItem)
		for _, l := range it.links {
			if !walk.queued.Visit(l) {
				continue
			}
			meta, ok := g.blockMeta(ctx, l)
			reads++
			if !ok {
				continue
			}
			child := &walkItem{cid: l, links: meta.links, height: meta.height}
			// Does the link from it to child cross a sampled height?
			for d := uint64(1); d <= maxKnownDepth && d <= top; d *= 2 {
				if th := top - d; child.height <= th && th < it.height && named.Visit(l) {
					out = append(out, l)
					break
				}
			}
			if top-min(top, maxKnownDepth) < child.height {
				heap.Push(&walk.queue, child)
			}
		}
	}
	return out
}

// arrivals lets a walk that needs a block wait for a fetch in progress
// that is likely to bring it (the server sends ancestors), instead of
// asking for it again.
type arrivals struct {
	mu      sync.Mutex
	active  int
	waiters map[cid.Cid][]*waiter
	ends    []*waiter // woken when a fetch ends
}

// waiter is woken once, by the first of its blocks to arrive or the end
// of a fetch.
type waiter struct {
	ch   chan struct{}
	once sync.Once
}

func (w *waiter) wake() { w.once.Do(func() { close(w.ch) }) }

// fetching is the number of fetches in progress.
func (a *arrivals) fetching() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.active
}

func (a *arrivals) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.active--
	for _, w := range a.ends {
		w.wake()
	}
	a.ends = nil
	// Every waiter was just woken: forget them all.
	clear(a.waiters)
}

func (a *arrivals) arrived(c cid.Cid) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.waiters[c] {
		w.wake()
	}
	delete(a.waiters, c)
}

// claim makes the caller the group's fetcher when no fetch is in
// progress (claimed: it fetches, then calls end); otherwise it returns a
// channel closed when one of cids arrives or the fetch in progress ends.
// The check and the claim are one step: a fetch counted only once its
// request was sent (after opening the stream and sampling the known
// blocks) let the walks that needed a block in the meantime all ask for
// it, and the server sent each of them the same ancestors.
func (a *arrivals) claim(cids []cid.Cid) (woken <-chan struct{}, claimed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.active == 0 {
		a.active++
		return nil, true
	}
	if a.waiters == nil {
		a.waiters = map[cid.Cid][]*waiter{}
	}
	w := &waiter{ch: make(chan struct{})}
	for _, c := range cids {
		a.waiters[c] = append(a.waiters[c], w)
	}
	a.ends = append(a.ends, w)
	return w.ch, false
}

func verifiedBlock(c cid.Cid, raw []byte) (blocks.Block, error) {
	sum, err := c.Prefix().Sum(raw)
	if err != nil {
		return nil, err
	}
	if !sum.Equals(c) {
		return nil, fmt.Errorf("block %s hashes to %s", c, sum)
	}
	return blocks.NewBlockWithCid(raw, c)
}

// fetchReconnectWait bounds how long a fetch whose connection closed
// waits for the member to connect again before it gives up on it: a
// heal's redial takes a few round trips.
const fetchReconnectWait = time.Second

// reconnected waits, at most within, until p is connected, and reports
// whether it is.
func (m *Manager) reconnected(ctx context.Context, p peer.ID, within time.Duration) bool {
	deadline := time.Now().Add(within)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if ctx.Err() != nil || m.ctx.Err() != nil {
			return false
		}
		if m.cfg.Host.Network().Connectedness(p) == network.Connected {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
		case <-m.ctx.Done():
		case <-t.C:
		}
	}
}

// logFetch logs one block fetch at debug level (a heal's timeline): the
// site's name costs a lock, taken only when the line is written.
func (g *Group) logFetch(ctx context.Context, p peer.ID, want, stored int, start time.Time, err error, again bool) {
	if !g.m.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	g.m.log.Debug("fetch blocks", "group", g.name, "site", g.m.siteOf(p), "want", want, "stored", stored, "took", time.Since(start), "err", err, "again", again)
}

// missing returns the blocks of cids this group does not hold.
func (g *Group) missing(ctx context.Context, cids []cid.Cid) []cid.Cid {
	var out []cid.Cid
	for _, c := range cids {
		if ok, _ := g.blocks().Has(ctx, c); !ok {
			out = append(out, c)
		}
	}
	return out
}

// exchange fetches a group's missing blocks from its connected members
// only. It is the group's blockservice exchange; blocks this site holds
// never reach it (the blockservice reads the blockstore first).
type exchange struct{ g *Group }

// GetBlock asks the connected members in turn until one has the block.
func (e exchange) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if err := e.getMissing(ctx, []cid.Cid{c}); err != nil {
		return nil, err
	}
	return e.g.blocks().Get(ctx, c)
}

// getMissing fetches the wanted blocks, all in one request per member,
// asking the next member only for what is still missing.
func (e exchange) getMissing(ctx context.Context, want []cid.Cid) error {
	g := e.g
	g.m.metrics.fetching.Inc()
	defer g.m.metrics.fetching.Dec()
	// A fetch in progress probably brings these blocks (the server sends
	// ancestors): wait for it, then fetch what is still missing.
	for {
		woken, claimed := g.arrivals.claim(want)
		if claimed {
			break
		}
		if want = g.missing(ctx, want); len(want) == 0 {
			return nil
		}
		select {
		case <-woken:
		case <-ctx.Done():
			return ctx.Err()
		}
		if want = g.missing(ctx, want); len(want) == 0 {
			return nil
		}
	}
	defer g.arrivals.end()
	// The fetch that just ended may have brought them.
	if want = g.missing(ctx, want); len(want) == 0 {
		return nil
	}
	var lastErr error = ipld.ErrNotFound{Cid: want[0]}
	for _, p := range g.sources.first(want, g.connectedMembers()) {
		start := time.Now()
		n, err := g.fetch(ctx, p, want)
		if errors.Is(err, network.ErrReset) && g.m.reconnected(ctx, p, fetchReconnectWait) {
			// The stream the answer came on was reset (a heal closes
			// the connections a cut stalled, under the fetches they
			// carried) and the member is connected, still or again: ask
			// it once more. go-ds-crdt drops a head whose walk failed,
			// until a push or an anti-entropy round announces it again
			// (340 ms after a heal at 80 ms RTT).
			g.logFetch(ctx, p, len(want), n, start, err, true)
			g.m.metrics.fetchRetries.Inc()
			start = time.Now()
			n, err = g.fetch(ctx, p, want)
		}
		if err != nil {
			lastErr = err
		}
		g.logFetch(ctx, p, len(want), n, start, err, false)
		if want = g.missing(ctx, want); len(want) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			g.repairSoon()
			return ctx.Err()
		}
	}
	g.repairSoon()
	return lastErr
}

// sources remembers, for the heads members announced lately, which member
// announced each, so that a walk asks that member first: it holds the
// branch. Asking the members in a fixed order instead cost a round trip
// to a member on the same side of a healed partition for most groups
// (after a heal, every site's first request for a group went to such a
// member in half the cases, and came back empty).
type sources struct {
	mu sync.Mutex
	by map[cid.Cid]peer.ID
	// last is the member whose announcement came last: the walk of its
	// heads asks it first for blocks no head names (ancestors past what
	// one answer carried).
	last peer.ID
}

// maxSources bounds the heads remembered per group; the set starts over
// when full (a forgotten source costs a round trip, never correctness).
const maxSources = 1024

// announced notes that p announced the heads of an encoded broadcast.
func (s *sources) announced(heads []byte, p peer.ID) {
	var msg pb.CRDTBroadcast
	if proto.Unmarshal(heads, &msg) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.by == nil || len(s.by) >= maxSources {
		s.by = map[cid.Cid]peer.ID{}
	}
	for _, h := range msg.GetHeads() {
		if c, err := cid.Cast(h.GetCid()); err == nil {
			s.by[c] = p
		}
	}
	s.last = p
}

// forget drops the heads remembered, keeping the last announcer: a
// group that sleeps has merged every head announced to it (nothing
// queued, nothing fetched), and the map cost each idle group ~0.2 KiB
// at each of its members.
func (s *sources) forget() {
	s.mu.Lock()
	s.by = nil
	s.mu.Unlock()
}

// first orders members for a fetch of want: the members that announced
// one of the wanted blocks, then the last announcer, then the others in
// their order.
func (s *sources) first(want []cid.Cid, members []peer.ID) []peer.ID {
	s.mu.Lock()
	rank := make(map[peer.ID]int, len(members))
	for _, c := range want {
		if p, ok := s.by[c]; ok {
			rank[p] = 2
		}
	}
	if s.last != "" && rank[s.last] == 0 {
		rank[s.last] = 1
	}
	s.mu.Unlock()
	out := slices.Clone(members)
	slices.SortStableFunc(out, func(a, b peer.ID) int { return rank[b] - rank[a] })
	return out
}

// GetBlocks fetches every block of cids that the members have, in one
// request, and sends the blocks on the channel. Its goroutine ends when
// ctx or the manager is done, and the manager's Close waits for it
// (enter): it reads the datastore, which the caller closes after Close
// (a fetch that outlived its manager panicked in pebble, "pebble:
// closed", when 100 in-process sites stopped in the middle of merges).
func (e exchange) GetBlocks(ctx context.Context, cids []cid.Cid) (<-chan blocks.Block, error) {
	m := e.g.m
	if !m.enter() {
		return nil, ErrClosed
	}
	out := make(chan blocks.Block, len(cids))
	go func() {
		defer m.wg.Done()
		defer close(out)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(m.ctx, cancel)()
		if missing := e.g.missing(ctx, cids); len(missing) > 0 {
			_ = e.getMissing(ctx, missing)
		}
		for _, c := range cids {
			if ctx.Err() != nil {
				return
			}
			b, err := e.g.blocks().Get(ctx, c)
			if err != nil {
				continue
			}
			select {
			case out <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (exchange) NotifyNewBlocks(context.Context, ...blocks.Block) error { return nil }
func (exchange) Close() error                                           { return nil }

// readRequest reads the one JSON frame a member sends on a heads or
// digest stream, within FetchTimeout. On failure the stream is reset (a
// frame that is not JSON is counted as malformed) and false returned.
func (m *Manager) readRequest(s network.Stream, v any) bool {
	_ = s.SetDeadline(time.Now().Add(m.cfg.FetchTimeout))
	return m.readFrameJSON(s, bufio.NewReader(s), v)
}

// readFrameJSON reads one JSON frame from r; on failure the stream is
// reset and false returned.
func (m *Manager) readFrameJSON(s network.Stream, r *bufio.Reader, v any) bool {
	frame, err := readFrame(r, maxFrame)
	if err != nil {
		_ = s.Reset()
		return false
	}
	if err := json.Unmarshal(frame, v); err != nil {
		m.metrics.malformed.Inc()
		_ = s.Reset()
		return false
	}
	return true
}

// pushHeads sends the group's heads to one member, on its link (without
// blocks: the member fetches what it lacks).
func (g *Group) pushHeads(ctx context.Context, p peer.ID) error {
	heads, err := g.encodedHeads(ctx)
	if err != nil || heads == nil {
		return err
	}
	if err := g.m.links.send(ctx, p, g, encodeMessage(heads, nil), linkPush); err != nil {
		return fmt.Errorf("push heads of {%s}: %w", g.name, err)
	}
	g.m.metrics.headsPushed.Inc()
	return nil
}

// serveWalk is the block server's walk of an answer: from the wanted
// blocks down their links, highest DAG height first (so that a chain
// arrives in one answer, newest first), and not into what the asker
// holds. A block the asker holds (named in the request's known blocks,
// reported while the answer goes, or an ancestor of such a block) is
// walked as known: never sent, and its links are known too. Walking by
// height, a block's known ancestors are marked before the walk could
// reach them by another path: a block is reached only after every
// block above it. (Breadth first, a known block stopped only the path
// through it: after a heal, the other paths of a DAG that several sites
// wrote went down through the shared history to its root, and each
// answer sent up to 150 blocks the asker held.) The walk ends when
// nothing but known blocks is left.
type serveWalk struct {
	ctx   context.Context
	g     *Group
	known *cidSet
	queue walkQueue
	// queued: blocks queued to send; walked: blocks queued as known.
	queued, walked *cid.Set
	unknown        int // items queued to send
}

// walkItem is one block of a walk; block is set only for a block to send.
type walkItem struct {
	cid    cid.Cid
	block  blocks.Block
	links  []cid.Cid
	height uint64
	parent cid.Cid // the block it is a link of; undefined for a wanted block
	known  bool
}

// walkQueue is a heap: highest first, known first at equal heights.
type walkQueue []*walkItem

func (q walkQueue) Len() int { return len(q) }
func (q walkQueue) Less(i, j int) bool {
	if q[i].height != q[j].height {
		return q[i].height > q[j].height
	}
	return q[i].known && !q[j].known
}
func (q walkQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *walkQueue) Push(x any)   { *q = append(*q, x.(*walkItem)) }
func (q *walkQueue) Pop() any {
	old := *q
	it := old[len(old)-1]
	*q = old[:len(old)-1]
	return it
}

func newServeWalk(ctx context.Context, g *Group, known *cidSet) *serveWalk {
	return &serveWalk{ctx: ctx, g: g, known: known, queued: cid.NewSet(), walked: cid.NewSet()}
}

// enqueue queues block c, a link of parent (undefined: wanted), to send
// or as known. A block this site does not hold is left out.
func (w *serveWalk) enqueue(c, parent cid.Cid, known bool) {
	set := w.queued
	if known {
		set = w.walked
	}
	if !set.Visit(c) {
		return
	}
	it := &walkItem{cid: c, parent: parent, known: known}
	if known {
		// Walked, never sent: its links and height are enough.
		meta, ok := w.g.blockMeta(w.ctx, c)
		if !ok {
			return
		}
		it.links, it.height = meta.links, meta.height
	} else {
		b, err := w.g.blocks().Get(w.ctx, c)
		if err != nil {
			return
		}
		meta, ok := w.g.metas.get(c)
		if !ok {
			meta, _ = parseBlock(b.RawData())
			w.g.metas.put(c, meta)
		}
		it.block, it.links, it.height = b, meta.links, meta.height
		w.unknown++
	}
	heap.Push(&w.queue, it)
}

// next returns the next block to send, or nil when there is none.
func (w *serveWalk) next() blocks.Block {
	for w.unknown > 0 && w.queue.Len() > 0 {
		it := heap.Pop(&w.queue).(*walkItem)
		c := it.cid
		if !it.known {
			w.unknown--
			// A wanted block is sent whatever the asker says it holds.
			if it.parent.Defined() && (w.known.has(c) || w.known.has(it.parent)) {
				it.known = true
			}
		}
		if it.known {
			w.known.add(c)
			for _, l := range it.links {
				w.known.add(l)
				w.enqueue(l, c, true)
			}
			continue
		}
		for _, l := range it.links {
			w.enqueue(l, c, false)
		}
		return it.block
	}
	return nil
}
