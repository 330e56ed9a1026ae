package wan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Network is a set of emulated sites and the links between them. It is
// safe for concurrent use.
type Network struct {
	log *slog.Logger

	mu      sync.Mutex
	byIP    map[string]string // site address → site name
	delay   map[pair]time.Duration
	cuts    map[direction]chan struct{} // closed on heal
	relays  []net.Listener
	links   map[*link]struct{}
	closed  bool
	relayWG sync.WaitGroup
}

// pair is an unordered pair of sites.
type pair struct{ a, b string }

// direction is traffic from one site to another.
type direction struct{ from, to string }

func pairOf(a, b string) pair {
	if a > b {
		a, b = b, a
	}
	return pair{a, b}
}

// New returns an empty network. A nil logger discards.
func New(log *slog.Logger) *Network {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Network{log: log.With("component", "wan"), byIP: map[string]string{}, delay: map[pair]time.Duration{},
		cuts: map[direction]chan struct{}{}, links: map[*link]struct{}{}}
}

// SiteAddr is the loopback address site number i (from 0) listens on and
// dials from; RelayAddr is the one its relay listens on.
func SiteAddr(i int) string  { return fmt.Sprintf("127.0.0.%d", 10+i) }
func RelayAddr(i int) string { return fmt.Sprintf("127.0.1.%d", 10+i) }

// AddSite declares that connections from ip come from site.
func (n *Network) AddSite(site, ip string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.byIP[ip] = site
}

// Expose starts the relay of site on relayIP (port chosen by the system)
// in front of target (host:port, the site's own listener) and returns the
// relay's host:port, the address the site must announce.
func (n *Network) Expose(site, relayIP, target string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(relayIP, "0"))
	if err != nil {
		return "", fmt.Errorf("wan: relay for %s: %w", site, err)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		l.Close()
		return "", errors.New("wan: network closed")
	}
	n.relays = append(n.relays, l)
	n.relayWG.Add(1)
	n.mu.Unlock()
	go n.serve(l, site, target)
	return l.Addr().String(), nil
}

// SetDelay sets the one-way delay between two sites, both directions (the
// round-trip time grows by twice d).
func (n *Network) SetDelay(a, b string, d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.delay[pairOf(a, b)] = d
}

// SetRTT sets the round-trip time between every two declared sites.
func (n *Network) SetRTT(rtt time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var sites []string
	for _, s := range n.byIP {
		sites = append(sites, s)
	}
	for _, a := range sites {
		for _, b := range sites {
			if a != b {
				n.delay[pairOf(a, b)] = rtt / 2
			}
		}
	}
}

// Cut stops all traffic between every site of one side and every site of
// the other until Heal.
func (n *Network) Cut(side1, side2 []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cutLocked(side1, side2)
	n.cutLocked(side2, side1)
	n.log.Info("cut", "side1", side1, "side2", side2)
}

// CutOneWay stops the traffic from every site of from to every site of
// to until Heal; the other direction flows. A link that was open goes on
// carrying bytes from to to from while the bytes the other way are
// dropped; a new connection either way hangs, its handshake needing
// both directions.
func (n *Network) CutOneWay(from, to []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cutLocked(from, to)
	n.log.Info("cut one way", "from", from, "to", to)
}

func (n *Network) cutLocked(from, to []string) {
	for _, a := range from {
		for _, b := range to {
			if d := (direction{a, b}); n.cuts[d] == nil {
				n.cuts[d] = make(chan struct{})
			}
		}
	}
}

// Heal lifts every cut.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for p, healed := range n.cuts {
		close(healed)
		delete(n.cuts, p)
	}
	n.log.Info("healed")
}

// Close stops every relay and closes every link.
func (n *Network) Close() error {
	n.mu.Lock()
	n.closed = true
	for _, l := range n.relays {
		l.Close()
	}
	for l := range n.links {
		l.close()
	}
	for p, healed := range n.cuts {
		close(healed)
		delete(n.cuts, p)
	}
	n.mu.Unlock()
	n.relayWG.Wait()
	return nil
}

// state returns the one-way delay between two sites and, when the
// traffic from a to b is cut, a channel closed on heal.
func (n *Network) state(a, b string) (time.Duration, chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.delay[pairOf(a, b)], n.cuts[direction{a, b}]
}

// handshake returns, when either direction between a and b is cut, a
// channel closed on heal: a new connection needs both.
func (n *Network) handshake(a, b string) chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c := n.cuts[direction{a, b}]; c != nil {
		return c
	}
	return n.cuts[direction{b, a}]
}

func (n *Network) serve(l net.Listener, site, target string) {
	defer n.relayWG.Done()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		from := "client"
		if host, _, err := net.SplitHostPort(conn.RemoteAddr().String()); err == nil {
			n.mu.Lock()
			if s, ok := n.byIP[host]; ok {
				from = s
			}
			n.mu.Unlock()
		}
		lk := &link{n: n, from: from, to: site, in: conn, done: make(chan struct{})}
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			conn.Close()
			return
		}
		n.links[lk] = struct{}{}
		n.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			lk.run(target)
		}()
	}
}

// link is one relayed connection from site `from` to site `to`.
type link struct {
	n        *Network
	from, to string
	in, out  net.Conn
	once     sync.Once
	done     chan struct{}
}

func (lk *link) close() {
	lk.once.Do(func() {
		close(lk.done)
		lk.in.Close()
		if lk.out != nil {
			lk.out.Close()
		}
	})
}

func (lk *link) run(target string) {
	defer func() {
		lk.close()
		lk.n.mu.Lock()
		delete(lk.n.links, lk)
		lk.n.mu.Unlock()
	}()
	// A connection opened across a cut hangs, as a dropped SYN would, and
	// is refused once the cut heals (the dialer has long given up).
	if healed := lk.n.handshake(lk.from, lk.to); healed != nil {
		select {
		case <-healed:
		case <-lk.done:
		}
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	out, err := d.Dial("tcp", target)
	if err != nil {
		lk.n.log.Warn("relay could not reach its site", "site", lk.to, "err", err)
		return
	}
	lk.n.mu.Lock()
	lk.out = out
	closed := lk.n.closed
	lk.n.mu.Unlock()
	if closed {
		out.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); lk.pipe(lk.in, out, lk.from, lk.to) }()
	go func() { defer wg.Done(); lk.pipe(out, lk.in, lk.to, lk.from) }()
	wg.Wait()
}

// chunk is bytes read at one instant, due at the far end at due; buf
// goes back to chunkBuffers once they are written.
type chunk struct {
	data []byte
	buf  *[]byte
	due  time.Time
}

// chunkBuffers are the relays' read buffers: a large body crossing a
// link would otherwise allocate one for every read, and the collector's
// work would count as the emulation's cost.
var chunkBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// pipe copies src to dst, each chunk delayed by the current one-way delay
// between the sites; a cut stalls it and heal closes the link.
func (lk *link) pipe(src, dst net.Conn, from, to string) {
	defer lk.close()
	queue := make(chan chunk, 256)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer close(queue)
		for {
			buf := chunkBuffers.Get().(*[]byte)
			k, err := src.Read(*buf)
			if k > 0 {
				d, _ := lk.n.state(from, to)
				select {
				case queue <- chunk{data: (*buf)[:k], buf: buf, due: time.Now().Add(d)}:
				case <-ctx.Done():
					return
				}
			} else {
				chunkBuffers.Put(buf)
			}
			if err != nil {
				return
			}
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for c := range queue {
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-lk.done:
				return
			}
		}
		if _, healed := lk.n.state(from, to); healed != nil {
			// Dropped on the floor: the link stalls until heal, then
			// closes, as TCP would after its retransmissions failed.
			select {
			case <-healed:
			case <-lk.done:
			}
			return
		}
		if _, err := dst.Write(c.data); err != nil {
			return
		}
		chunkBuffers.Put(c.buf)
	}
}
