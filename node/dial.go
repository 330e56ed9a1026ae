package node

import (
	"net"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// siteDialer makes every TCP connection a node opens come from the IP
// address it listens on, from a port the kernel picks. libp2p alone dials
// from the listen port (SO_REUSEPORT) and, when that pair of addresses is
// still busy (a connection to that peer closing, or in TIME_WAIT: a
// redial right after a heal), from any address the kernel picks — on a
// host with several addresses, not the site's. A firewall rule keyed on
// the site's address, or the benchmarks' WAN emulation (which tells sites
// apart by source address), then took the site's connection for someone
// else's: a cut no longer cut it.
//
// Not the listen port: two sites dialling each other at once from their
// listen ports name the same TCP 4-tuple, and the kernel joins the two
// SYNs into one connection (a TCP simultaneous open) on which both sides
// start the security handshake as its initiator ("tls: received
// unexpected handshake message of type *tls.clientHelloMsg"): both dials
// fail, and libp2p's dial backoff then kept the two sites apart for
// seconds to tens of seconds (TestSimultaneousDialsConnect).
type siteDialer struct {
	// listening returns the node's listen addresses (set once the host
	// exists; nil before).
	listening atomic.Pointer[func() []multiaddr.Multiaddr]
}

// forAddr is the transport's dialer for raddr (tcp.WithDialerForAddr).
func (s *siteDialer) forAddr(raddr multiaddr.Multiaddr) (tcp.ContextDialer, error) {
	d := &net.Dialer{}
	if f := s.listening.Load(); f != nil {
		if local := localFor((*f)(), raddr); local != nil {
			d.LocalAddr = &net.TCPAddr{IP: local.IP, Zone: local.Zone}
		}
	}
	return d, nil
}

// localFor picks, among listen addresses, the TCP address to dial raddr
// from: one of its IP family, loopback for a loopback destination, a
// specific IP before an unspecified one; nil when none fits.
func localFor(listen []multiaddr.Multiaddr, raddr multiaddr.Multiaddr) *net.TCPAddr {
	dest, err := manet.ToIP(raddr)
	if err != nil {
		return nil
	}
	var unspecified *net.TCPAddr
	for _, a := range listen {
		na, err := manet.ToNetAddr(a)
		if err != nil {
			continue
		}
		ta, ok := na.(*net.TCPAddr)
		if !ok || (ta.IP.To4() == nil) != (dest.To4() == nil) {
			continue
		}
		switch {
		case ta.IP.IsUnspecified():
			if unspecified == nil {
				unspecified = ta
			}
		case ta.IP.IsLoopback() == dest.IsLoopback():
			return ta
		}
	}
	return unspecified
}
