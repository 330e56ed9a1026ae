package node

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"

	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	reuseport "github.com/libp2p/go-reuseport"
	"github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// siteDialer makes every TCP connection a node opens come from the IP
// address it listens on. libp2p dials from the listen port (SO_REUSEPORT)
// and, when that fails because the same pair of addresses is still busy
// (a connection to that peer closing, or in TIME_WAIT: a redial right
// after a heal), dials again from any address the kernel picks — on a
// host with several addresses, not the site's. A firewall rule keyed on
// the site's address, or the benchmarks' WAN emulation (which tells sites
// apart by source address), then took the site's connection for someone
// else's: a cut no longer cut it. This dialer falls back to another port
// on the same address instead.
type siteDialer struct {
	// listening returns the node's listen addresses (set once the host
	// exists; nil before).
	listening atomic.Pointer[func() []multiaddr.Multiaddr]
}

// forAddr is the transport's dialer for raddr (tcp.WithDialerForAddr).
func (s *siteDialer) forAddr(raddr multiaddr.Multiaddr) (tcp.ContextDialer, error) {
	var local *net.TCPAddr
	if f := s.listening.Load(); f != nil {
		local = localFor((*f)(), raddr)
	}
	return fromAddr{local: local}, nil
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

// fromAddr dials from local's address and port, then from its address
// and any port while that pair of addresses is busy.
type fromAddr struct{ local *net.TCPAddr }

func (f fromAddr) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if f.local == nil {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	reuse := net.Dialer{LocalAddr: f.local, Control: reuseport.Control}
	conn, err := reuse.DialContext(ctx, network, addr)
	if err == nil || ctx.Err() != nil || !(errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL)) {
		return conn, err
	}
	other := net.Dialer{LocalAddr: &net.TCPAddr{IP: f.local.IP, Zone: f.local.Zone}}
	return other.DialContext(ctx, network, addr)
}
