package node

import (
	"errors"
	"fmt"

	"github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// ErrListen: a listen address could not be bound, most often because
// another process (another agent on the host) holds it. New fails rather
// than run on some of its addresses: libp2p alone starts as soon as one
// address listens, and a second agent with the default --listen would run
// on TCP 4001 shared through SO_REUSEPORT (the kernel spreading
// connections between the two) and without QUIC, without a word.
var ErrListen = errors.New("node: listen")

// missingListeners returns the requested addresses that no listener
// serves. A requested port 0 matches any port; every other component must
// be equal.
func missingListeners(requested, listening []multiaddr.Multiaddr) []multiaddr.Multiaddr {
	var missing []multiaddr.Multiaddr
	for _, r := range requested {
		found := false
		for _, l := range listening {
			if sameListener(r, l) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, r)
		}
	}
	return missing
}

func sameListener(requested, listening multiaddr.Multiaddr) bool {
	if len(requested) != len(listening) {
		return false
	}
	for i, rc := range requested {
		lc := listening[i]
		if rc.Code() != lc.Code() {
			return false
		}
		port := rc.Code() == multiaddr.P_TCP || rc.Code() == multiaddr.P_UDP
		if rc.Value() != lc.Value() && !(port && rc.Value() == "0") {
			return false
		}
	}
	return true
}

// listenError says why addr cannot listen, or nil when it can: it binds
// the address's IP and port itself, for the system's reason ("address
// already in use"). An address New found without a listener that binds
// here (a race) is still reported, without a cause, by the caller.
func listenError(addr multiaddr.Multiaddr) error {
	if len(addr) < 2 {
		return nil
	}
	base := addr[:2] // /ip4|ip6/…/tcp|udp/…
	var cause error
	switch base[1].Code() {
	case multiaddr.P_TCP:
		if l, err := manet.Listen(base); err != nil {
			cause = err
		} else {
			l.Close()
		}
	case multiaddr.P_UDP:
		if c, err := manet.ListenPacket(base); err != nil {
			cause = err
		} else {
			c.Close()
		}
	}
	if cause == nil {
		return nil
	}
	return fmt.Errorf("%w on %s: %w (is another agent running on this host? give this one another --listen)", ErrListen, addr, cause)
}
