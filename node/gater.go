package node

import (
	"log/slog"
	"sync"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
)

// trustGater refuses every connection to or from a peer that is not on the
// allowlist. The check happens on dial and once the secure handshake has
// authenticated the remote peer, so an untrusted peer never gets a stream.
type trustGater struct {
	self    peer.ID
	all     bool
	log     *slog.Logger
	mu      sync.Mutex
	trusted map[peer.ID]bool
	blocked map[peer.ID]bool
	refused map[peer.ID]int
}

func newTrustGater(self peer.ID, trust []peer.ID, all bool, log *slog.Logger) *trustGater {
	g := &trustGater{self: self, all: all, log: log, trusted: map[peer.ID]bool{self: true}, blocked: map[peer.ID]bool{}, refused: map[peer.ID]int{}}
	for _, p := range trust {
		g.trusted[p] = true
	}
	return g
}

func (g *trustGater) allowed(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.blocked[p] {
		return false
	}
	return g.all || g.trusted[p]
}

func (g *trustGater) setBlocked(p peer.ID, blocked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if blocked {
		g.blocked[p] = true
	} else {
		delete(g.blocked, p)
	}
}

func (g *trustGater) refuse(p peer.ID, how string) bool {
	g.mu.Lock()
	g.refused[p]++
	n := g.refused[p]
	g.mu.Unlock()
	if n <= 3 || n%100 == 0 {
		g.log.Warn("refused untrusted peer", "peer", p, "direction", how, "times", n)
	}
	return false
}

// Refused reports how many connections each untrusted peer attempted.
func (g *trustGater) Refused() map[peer.ID]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[peer.ID]int, len(g.refused))
	for p, n := range g.refused {
		out[p] = n
	}
	return out
}

func (g *trustGater) InterceptPeerDial(p peer.ID) bool {
	if g.allowed(p) {
		return true
	}
	return g.refuse(p, "dial")
}

func (g *trustGater) InterceptAddrDial(peer.ID, multiaddr.Multiaddr) bool { return true }

func (g *trustGater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

func (g *trustGater) InterceptSecured(dir network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	if g.allowed(p) {
		return true
	}
	return g.refuse(p, dir.String())
}

func (g *trustGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}
