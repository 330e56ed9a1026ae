package crdt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// LinkProtocol carries the head announcements of every group two sites
// share, on one long-lived stream per direction: a site's cost of
// announcing follows the peers it talks to, not the number of groups, and
// a new group needs no mesh or subscription before its first write is
// seen (the receiver joins it from the first message, after checking it
// against membership).
const LinkProtocol protocol.ID = "/cheops/crdt/link/1.0.0"

// Limits and timings of the links.
const (
	// linkQueue is how many messages wait for one link before Broadcast
	// waits too.
	linkQueue = 128
	// linkIdle closes a link that carried nothing for that long: an idle
	// site keeps no goroutine or stream per peer.
	linkIdle = 10 * time.Second
	// linkWriteTimeout bounds one write on a link; a member that does not
	// read loses the message (anti-entropy repeats the heads) rather than
	// holding every group's announcements.
	linkWriteTimeout = 10 * time.Second
	// linkBuffer sizes a link's write and read buffers: a few messages
	// (an announcement with its block is a few hundred bytes).
	linkBuffer = 8 << 10
)

// The buffers of link streams are kept for the next stream. A link
// opens a stream after each idle period or failure, at both ends, and at
// 100 sites × 20,000 writes the two 8 KiB buffers of each were 6.5 % of
// all the bytes the process allocated (16,000 streams opened). A buffer
// goes back to its pool once its stream is done with (closed or reset)
// and its goroutine no longer reads or writes it; frames read from one
// are copies (readFrame), so nothing refers to it after.
var (
	linkWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, linkBuffer) }}
	linkReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, linkBuffer) }}
)

// linkHeader opens each message on a link: the group, and the first time
// the group appears on the stream its peer ids, so that a member that has
// not joined it yet can check and join it.
type linkHeader struct {
	Group string    `json:"g"`
	Peers []peer.ID `json:"p,omitempty"`
}

// A header is {"g":"…"} or, the first time its group appears on the
// stream, {"g":"…","p":[…]}. encoding/json's reflection for it, and the
// decoding of every peer id it names (base58, multihash), were 4.5 % of
// the bytes allocated at 100 sites × 20,000 writes: there, a stream
// carries one or two messages of each of hundreds of groups, so most
// headers name their peers, which the receiver needs only for a group it
// has not joined. A header whose group name needs no escaping is written
// and read directly, its peers kept as JSON (checked well-formed) and
// decoded only when needed (Manager.receive); the bytes on the wire are
// the same JSON, and any other header goes through encoding/json.
const (
	groupHeaderOpen  = `{"g":"`
	groupHeaderClose = `"}`
	groupHeaderPeers = `","p":`
)

// linkHeaderIn is a link header as read: its peers as JSON.
type linkHeaderIn struct {
	Group string          `json:"g"`
	Peers json.RawMessage `json:"p,omitempty"`
}

// encode returns the header's JSON.
func (h linkHeader) encode() ([]byte, error) {
	if !plainJSONString(h.Group) {
		return json.Marshal(h)
	}
	b := make([]byte, 0, len(groupHeaderOpen)+len(h.Group)+len(groupHeaderPeers)+len(h.Peers)*56+len(groupHeaderClose))
	b = append(b, groupHeaderOpen...)
	b = append(b, h.Group...)
	if len(h.Peers) == 0 {
		return append(b, groupHeaderClose...), nil
	}
	peers, err := json.Marshal(h.Peers)
	if err != nil {
		return nil, err
	}
	b = append(b, groupHeaderPeers...)
	b = append(b, peers...)
	return append(b, '}'), nil
}

// decode reads a header's JSON.
func (h *linkHeaderIn) decode(data []byte) error {
	if len(data) > len(groupHeaderOpen) && string(data[:len(groupHeaderOpen)]) == groupHeaderOpen {
		rest := data[len(groupHeaderOpen):]
		if end := bytes.IndexByte(rest, '"'); end >= 0 {
			name, tail := string(rest[:end]), rest[end:]
			switch {
			case !plainJSONString(name):
			case string(tail) == groupHeaderClose:
				*h = linkHeaderIn{Group: name}
				return nil
			case bytes.HasPrefix(tail, []byte(groupHeaderPeers)) && bytes.HasSuffix(tail, []byte("]}")):
				if peers := tail[len(groupHeaderPeers) : len(tail)-1]; peers[0] == '[' && json.Valid(peers) {
					*h = linkHeaderIn{Group: name, Peers: bytes.Clone(peers)}
					return nil
				}
			}
		}
	}
	var v linkHeaderIn // only this path's header escapes to the heap
	err := json.Unmarshal(data, &v)
	*h = v
	return err
}

// streamPeers keeps, per group, the peers a link stream announced with
// it, as JSON (see linkHeaderIn).
type streamPeers map[string][]byte

// plainJSONString reports whether s is printable ASCII without a quote, a
// backslash or a character encoding/json escapes (<, >, &): the same
// between JSON's quotes as in Go, as encoding/json writes it.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// links holds the outgoing link of every peer this site announces to.
type links struct {
	m  *Manager
	mu sync.Mutex
	by map[peer.ID]*link
}

// link sends one peer the announcements of every group they share, in
// the order they were made.
type link struct {
	peer    peer.ID
	queue   chan linkMessage
	pending int // senders about to queue; guarded by links.mu
	// pushes counts, per group, the heads pushes queued (guarded by
	// links.mu): a push with a newer one of its group behind it is not
	// sent (see take).
	pushes map[string]int
	// queued counts, per group, the announcements of new deltas
	// (linkFresh) queued or about to be, until taken off the queue; sent
	// is when the last one was taken to be written (unix ns). Both
	// guarded by links.mu: anti-entropy leaves a group in flight to the
	// peer out of its rounds with it (inFlight). Repeated heads (go-ds-
	// crdt's rebroadcasts, pushes) do not count: an idle group
	// rebroadcasts its heads while it stays awake, and would never
	// settle.
	queued map[string]int
	sent   map[string]int64
	swept  int // len(sent) after its last sweep
	done   chan struct{}
}

// linkMessage is one message of a group queued on a link. A push
// carries all the group's heads as of when it was made, and no block; a
// group's heads only move up its DAG, so a later push of the group says
// everything an earlier one does. A broadcast carries the heads of a new
// delta (and maybe its block), which no other message replaces.
type linkMessage struct {
	g    *Group
	body []byte
	kind linkKind
}

// linkKind is what a link message carries.
type linkKind uint8

const (
	// linkFresh announces a new delta (a head announced for the first
	// time), with its block when small enough.
	linkFresh linkKind = iota
	// linkRepeat repeats heads announced before (go-ds-crdt's
	// rebroadcast).
	linkRepeat
	// linkPush pushes all of a group's heads (pushHeads).
	linkPush
)

// send queues a message of group g for peer p, starting the peer's link
// if needed. It waits while the link's queue is full.
//
// A heads push (linkPush) still queued when a newer push of its group is
// queued behind it is dropped (take).
func (ls *links) send(ctx context.Context, p peer.ID, g *Group, body []byte, kind linkKind) error {
	push, fresh := kind == linkPush, kind == linkFresh
	ls.mu.Lock()
	l, ok := ls.by[p]
	if !ok {
		if ls.m.ctx.Err() != nil {
			ls.mu.Unlock()
			return ErrClosed
		}
		l = newLink(p)
		ls.by[p] = l
		ls.m.wg.Add(1)
		go ls.run(l)
	}
	l.pending++
	if fresh {
		l.queued[g.name]++
	}
	if push {
		// Counted before it is queued, so that take never sees a push
		// it has not counted.
		l.pushes[g.name]++
	}
	ls.mu.Unlock()
	queued := false
	defer func() {
		ls.mu.Lock()
		l.pending--
		if !queued {
			if fresh {
				l.dequeued(g.name)
			}
			if push {
				l.pushes[g.name]--
			}
		}
		ls.mu.Unlock()
	}()
	select {
	case l.queue <- linkMessage{g: g, body: body, kind: kind}:
		queued = true
		return nil
	case <-l.done:
		return ErrClosed
	case <-ctx.Done():
		ls.m.metrics.linkDrops.WithLabelValues(dropQueue).Inc()
		ls.m.lost(g.name, p)
		return ctx.Err()
	}
}

// Why a link dropped a message (the link drops counter's label).
const (
	dropOpen  = "open"  // no stream could be opened (or negotiated) to the peer
	dropWrite = "write" // the write failed, and again on a new stream
	dropQueue = "queue" // the queue stayed full for the sender's whole wait
)

// take reports whether a message just taken off l's queue is to be sent:
// not a push with a newer push of its group queued (or about to be)
// behind it. After a heal, the pushes of every connection event and
// anti-entropy round queue up behind a link that is opening its stream
// (seen: 16 messages for 4 groups, the oldest 333 ms old): only the
// newest heads of each group need to go, and the receiver then walks
// each group once instead of after every stale announcement. (A newer
// push counted while its sender waits for room, and whose send then
// fails, the manager closing or the queue staying full for the caller's
// whole timeout, leaves the group to the next push or anti-entropy
// round.) An announcement of a new delta taken is recorded as sent
// (inFlight).
func (ls *links) take(l *link, msg linkMessage) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if msg.kind == linkFresh {
		l.dequeued(msg.g.name)
		l.sending(msg.g.name, ls.m.inFlightFor())
	}
	if msg.kind != linkPush {
		return true
	}
	n := l.pushes[msg.g.name]
	if n <= 1 {
		delete(l.pushes, msg.g.name)
		return true
	}
	l.pushes[msg.g.name] = n - 1
	ls.m.metrics.pushesCoalesced.Inc()
	return false
}

// newLink makes p's link, not started.
func newLink(p peer.ID) *link {
	return &link{peer: p, queue: make(chan linkMessage, linkQueue), pushes: map[string]int{}, queued: map[string]int{}, sent: map[string]int64{}, swept: minSweep, done: make(chan struct{})}
}

// sending records that an announcement of group is about to be written
// (links.mu held). The record of a group is dropped once older than keep
// (ns; the link's map is swept when it has doubled since the last
// sweep): a busy link carries hundreds of groups.
func (l *link) sending(group string, keep int64) {
	now := time.Now().UnixNano()
	l.sent[group] = now
	if len(l.sent) < 2*l.swept {
		return
	}
	for g, at := range l.sent {
		if now-at > keep {
			delete(l.sent, g)
		}
	}
	l.swept = max(len(l.sent), minSweep)
}

// minSweep is the fewest groups a link's sent map holds before a sweep.
const minSweep = 64

// dequeued counts one message of group off the queue (links.mu held).
func (l *link) dequeued(group string) {
	if n := l.queued[group]; n > 1 {
		l.queued[group] = n - 1
	} else {
		delete(l.queued, group)
	}
}

// inFlight reports whether an announcement of a new delta of g to p
// waits on p's link (queued, or about to be), or was written after since
// (unix ns).
func (ls *links) inFlight(p peer.ID, g *Group, since int64) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.by[p]
	return l != nil && (l.queued[g.name] > 0 || l.sent[g.name] > since)
}

// count is the number of open links.
func (ls *links) count() int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return len(ls.by)
}

// retire removes an idle link with nothing queued or about to be.
func (ls *links) retire(l *link) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if l.pending > 0 || len(l.queue) > 0 {
		return false
	}
	delete(ls.by, l.peer)
	close(l.done)
	return true
}

// run writes a link's messages on one stream, opened when the first
// message comes and again after a failure, and flushes whenever the queue
// is empty: a burst travels in few packets. A write or flush that fails
// (the stream died with its connection: a heal closes the connection a
// cut stalled) is tried once more on a new stream, with every message
// written since the last flush: the member is often reachable on another
// or a new connection, and the first messages after a heal are the
// catch-up pushes of that very heal. What still cannot be written is
// dropped (the peer is not connected, or does not read); pushes on
// reconnection and anti-entropy rounds repeat the heads.
func (ls *links) run(l *link) {
	m := ls.m
	defer m.wg.Done()
	var out linkStream
	defer out.close()
	idle := time.NewTimer(linkIdle)
	defer idle.Stop()
	for {
		var msg linkMessage
		select {
		case <-m.ctx.Done():
			ls.mu.Lock()
			if ls.by[l.peer] == l {
				delete(ls.by, l.peer)
				close(l.done)
			}
			ls.mu.Unlock()
			return
		case <-idle.C:
			if ls.retire(l) {
				return
			}
			idle.Reset(linkIdle)
			continue
		case msg = <-l.queue:
		}
		if !ls.take(l, msg) {
			continue
		}
		if out.s == nil {
			if err := out.open(ls, l.peer); err != nil {
				m.metrics.linkDrops.WithLabelValues(dropOpen).Inc()
				m.lost(msg.g.name, l.peer)
				m.log.Debug("open link", "peer", l.peer, "err", err)
				ls.flushOut(l) // the queue's messages would fail the same way
				continue
			}
		}
		out.unflushed = append(out.unflushed, msg)
		err := out.write(ls, msg)
		if err == nil && (len(l.queue) == 0 || len(out.unflushed) >= maxUnflushed) {
			err = out.flush()
		}
		if err != nil {
			ls.resend(l, &out, err)
		}
		if !idle.Stop() {
			select {
			case <-idle.C:
			default:
			}
		}
		idle.Reset(linkIdle)
	}
}

// maxUnflushed bounds the messages a link writes before it flushes (and
// keeps for a resend) while its queue stays busy.
const maxUnflushed = 64

// resend writes the messages of a failed stream since its last flush on
// a new stream, once; they are dropped if that fails too.
func (ls *links) resend(l *link, out *linkStream, cause error) {
	m := ls.m
	msgs := out.unflushed
	out.reset()
	m.log.Debug("link failed; resending on a new stream", "peer", l.peer, "messages", len(msgs), "err", cause)
	err := out.open(ls, l.peer)
	for i := 0; err == nil && i < len(msgs); i++ {
		out.unflushed = append(out.unflushed, msgs[i])
		err = out.write(ls, msgs[i])
	}
	if err == nil {
		err = out.flush()
	}
	if err != nil {
		m.metrics.linkDrops.WithLabelValues(dropWrite).Add(float64(len(msgs)))
		for _, msg := range msgs {
			m.lost(msg.g.name, l.peer)
		}
		m.log.Debug("resend on link", "peer", l.peer, "messages", len(msgs), "err", err)
		out.reset()
		return
	}
	m.metrics.linkResends.Add(float64(len(msgs)))
}

// linkStream is a link's current stream, and the messages written on it
// since its last flush.
type linkStream struct {
	s         network.Stream
	w         *bufio.Writer
	announced map[string]bool // groups whose peers this stream carried
	unflushed []linkMessage
}

func (o *linkStream) open(ls *links, p peer.ID) error {
	s, err := ls.open(p)
	if err != nil {
		return err
	}
	w := linkWriters.Get().(*bufio.Writer)
	w.Reset(s)
	o.s, o.w, o.announced, o.unflushed = s, w, map[string]bool{}, nil
	return nil
}

func (o *linkStream) write(ls *links, msg linkMessage) error {
	_ = o.s.SetWriteDeadline(time.Now().Add(linkWriteTimeout))
	return ls.write(o.w, msg, o.announced)
}

func (o *linkStream) flush() error {
	if err := o.w.Flush(); err != nil {
		return err
	}
	o.unflushed = o.unflushed[:0]
	return nil
}

// reset abandons the stream.
func (o *linkStream) reset() {
	if o.s != nil {
		_ = o.s.Reset()
	}
	o.release()
	*o = linkStream{}
}

func (o *linkStream) close() {
	if o.s != nil {
		_ = o.s.Close()
	}
	o.release()
}

// release gives the stream's write buffer back to its pool.
func (o *linkStream) release() {
	if o.w != nil {
		o.w.Reset(nil)
		linkWriters.Put(o.w)
		o.w = nil
	}
}

// flushOut drops what is queued on a link that cannot be opened.
func (ls *links) flushOut(l *link) {
	for {
		select {
		case msg := <-l.queue:
			if ls.take(l, msg) {
				ls.m.metrics.linkDrops.WithLabelValues(dropOpen).Inc()
				ls.m.lost(msg.g.name, l.peer)
			}
		default:
			return
		}
	}
}

// open starts the stream of a link, without dialling: a member that is
// not connected is caught up with when it connects.
func (ls *links) open(p peer.ID) (network.Stream, error) {
	ctx, cancel := context.WithTimeout(ls.m.ctx, ls.m.cfg.FetchTimeout)
	defer cancel()
	ctx = network.WithNoDial(ctx, "crdt link: members are caught up when they connect")
	s, err := ls.m.cfg.Host.NewStream(ctx, p, LinkProtocol)
	if err != nil {
		return nil, fmt.Errorf("open link stream: %w", err)
	}
	return s, nil
}

// write encodes one message: a header frame and the body frame.
func (ls *links) write(w *bufio.Writer, msg linkMessage, announced map[string]bool) error {
	h := linkHeader{Group: msg.g.name}
	if !announced[msg.g.name] {
		h.Peers = msg.g.peers
	}
	head, err := h.encode()
	if err != nil {
		return err
	}
	if err := writeFrame(w, head); err != nil {
		return err
	}
	if err := writeFrame(w, msg.body); err != nil {
		return err
	}
	announced[msg.g.name] = true
	ls.m.metrics.broadcastBytesSent.Add(float64(len(head) + len(msg.body)))
	return nil
}

// serveLink reads a member's link until it ends or the manager closes.
// Each message's group must name the sender as a member; a group this
// site has not joined yet is joined after checking it (joinClaimed).
func (m *Manager) serveLink(s network.Stream) {
	if !m.enter() {
		_ = s.Reset()
		return
	}
	defer m.wg.Done()
	stop := context.AfterFunc(m.ctx, func() { _ = s.Reset() })
	defer stop()
	defer s.Close()
	remote := s.Conn().RemotePeer()
	from := m.siteOf(remote)
	r := linkReaders.Get().(*bufio.Reader)
	r.Reset(s)
	defer func() {
		r.Reset(nil)
		linkReaders.Put(r)
	}()
	peers := streamPeers{} // group → peers the stream announced
	for {
		h, body, size, err := readLinkMessage(r, peers)
		if errors.Is(err, errBadMessage) {
			m.metrics.malformed.Inc()
			m.log.Warn("dropped a malformed link message", "peer", remote, "err", err)
			_ = s.Reset()
			return
		}
		if err != nil {
			return
		}
		m.metrics.broadcastBytesReceived.WithLabelValues(from).Add(float64(size))
		if err := m.receive(remote, h.Group, peers[h.Group], body); err != nil {
			if errors.Is(err, ErrNotMember) || errors.Is(err, ErrBadGroup) {
				m.metrics.refused.Inc()
				m.log.Warn("refused a link message", "peer", remote, "group", h.Group, "err", err)
				continue
			}
			if errors.Is(err, errBadMessage) {
				m.metrics.malformed.Inc()
				m.log.Warn("dropped a malformed link message", "peer", remote, "group", h.Group, "err", err)
				continue
			}
			// Not merged (the store or the replica failed): the group
			// is compared at the next round with the sender, which may
			// otherwise take it for in flight (settling).
			m.lost(h.Group, remote)
			m.log.Debug("link message", "peer", remote, "group", h.Group, "err", err)
		}
	}
}

// readLinkMessage reads one message of a link: its header, then its body
// (size counts both frames' bytes). A header naming the group's members
// (the first message of a group on the stream) is kept in peers, which
// later messages of the group rely on. A header that is not JSON is
// errBadMessage; any other error is the stream's.
func readLinkMessage(r *bufio.Reader, peers streamPeers) (h linkHeaderIn, body []byte, size int, err error) {
	head, err := readFrame(r, maxFrame)
	if err != nil {
		return h, nil, 0, err
	}
	body, err = readFrame(r, maxFrame+maxBlock)
	if err != nil {
		return h, nil, 0, err
	}
	if err := h.decode(head); err != nil {
		return h, nil, 0, fmt.Errorf("%w: link header: %v", errBadMessage, err)
	}
	if len(h.Peers) > 0 {
		peers[h.Group] = h.Peers
	}
	return h, body, len(head) + len(body), nil
}

// receive hands one member's announcement to its group: the inlined
// blocks are stored (each checked against its CID), then the heads queued
// for the replica.
//
// A replica behind does not hold the link. A link carries the
// announcements of every group two sites share, read one after the
// other. When a group's replica is behind (its queue of headsBuffer
// announcements full), its announcement is dropped at once rather than
// waiting for room. Waiting (up to a second per message, as before)
// stalled every other group on the link behind the one replica, and, the
// reader stalling, the sender's writes then timed out after
// linkWriteTimeout: its stream was reset and the unflushed messages of
// every group were resent or lost (one group of 30 sites written by all
// of them never converged that way). Nothing is lost by dropping: the
// announcement's blocks are stored before its heads are handed over, so
// the member's next announcement of the group, whose delta links its
// previous heads, reaches them without a fetch; and the member's last
// heads come again with the next anti-entropy round, which finds the
// two sides' heads different and pushes them both ways.
//
// peers is the JSON of the group's peer ids as the stream announced
// them, decoded only for a group this site has not joined.
func (m *Manager) receive(remote peer.ID, name string, peers []byte, body []byte) error {
	g := m.group(name)
	if g == nil {
		var ids []peer.ID
		if len(peers) > 0 {
			if err := json.Unmarshal(peers, &ids); err != nil {
				return fmt.Errorf("%w: peers of group %q: %v", errBadMessage, name, err)
			}
		}
		if len(ids) == 0 {
			return fmt.Errorf("%w: announcement for group %q with no peers", ErrBadGroup, name)
		}
		var err error
		g, err = m.joinClaimed(groupClaim{Group: name, Sites: strings.Split(name, ","), Peers: ids}, remote)
		if err != nil {
			return err
		}
	}
	if !g.member(remote) {
		return fmt.Errorf("%w: %s is not in {%s}", ErrNotMember, remote, name)
	}
	heads, blks, err := decodeMessage(body)
	if err != nil {
		return err
	}
	g.sources.announced(heads, remote)
	if len(blks) > 0 {
		if err := g.blocks().PutMany(m.ctx, blks); err != nil {
			return fmt.Errorf("store inlined blocks of {%s}: %w", name, err)
		}
		m.metrics.inlineBlocksReceived.Add(float64(len(blks)))
		g.announcedNow() // a new delta: not a heads push
	}
	m.metrics.lastSync.WithLabelValues(m.siteOf(remote)).SetToCurrentTime()
	g.heard.Store(time.Now().UnixNano())
	// A replica whose queue is full does not get the heads (see above).
	cause := wakeAnnouncement
	if len(blks) == 0 {
		cause = wakePush
	}
	ok, err := g.deliver(m.ctx, heads, 0, false, cause)
	if g.awake() == nil {
		// Heads a sleeping group already holds do not wake it, and a
		// sleeping group keeps no sources (sleep forgot them) nor
		// blockstore view: the source just noted, and the view that
		// stored the blocks, would stay there for good.
		g.sources.forget()
		g.view.Store(nil)
	}
	if err != nil {
		return fmt.Errorf("deliver heads of {%s}: %w", name, err)
	}
	if !ok {
		m.metrics.queueDrops.Inc()
		m.lost(g.name, remote)
	}
	return nil
}
