package bench

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/multiformats/go-multiaddr"

	"cheops/bench/wan"
)

// bulkProtocol is the protocol of libp2pThrough's one stream.
const bulkProtocol = "/cheops-bench/bulk/1.0.0"

// libp2pThrough measures what a libp2p connection alone carries over the
// emulated WAN: two hosts built as the agents build theirs (TCP,
// libp2p's default security and muxer: TLS 1.3 and yamux), one on app's
// address behind a relay of the same network, the other on remote's,
// and size bytes written on one stream from the first to the second. It
// returns MiB/s: the bound of any body crossing an agent-to-agent hop,
// before HTTP and the agents' own work.
func libp2pThrough(ctx context.Context, nw *wan.Network, app, remote *Site, size int64) (float64, error) {
	newHost := func(ip string) (host.Host, error) {
		h, err := libp2p.New(
			libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/%s/tcp/0", ip)),
			libp2p.Transport(tcp.NewTCPTransport),
			libp2p.DisableRelay(),
		)
		if err != nil {
			return nil, fmt.Errorf("bench: libp2p host on %s: %w", ip, err)
		}
		return h, nil
	}
	sender, err := newHost(app.ip)
	if err != nil {
		return 0, err
	}
	defer sender.Close()
	receiver, err := newHost(remote.ip)
	if err != nil {
		return 0, err
	}
	defer receiver.Close()
	sender.SetStreamHandler(bulkProtocol, func(s network.Stream) {
		defer s.Close()
		if writeBytes(s, size) != nil {
			s.Reset()
		}
	})
	var target string
	for _, a := range sender.Network().ListenAddresses() {
		if ip, err := a.ValueForProtocol(multiaddr.P_IP4); err == nil && ip == app.ip {
			port, _ := a.ValueForProtocol(multiaddr.P_TCP)
			target = net.JoinHostPort(ip, port)
		}
	}
	if target == "" {
		return 0, fmt.Errorf("bench: libp2p host of %s listens on no TCP address", app.Name)
	}
	relay, err := nw.Expose(app.Name, hostOf(app.relay), target)
	if err != nil {
		return 0, err
	}
	relayHost, relayPort, err := net.SplitHostPort(relay)
	if err != nil {
		return 0, fmt.Errorf("bench: relay address %q: %w", relay, err)
	}
	addr, err := multiaddr.NewMultiaddr(fmt.Sprintf("/ip4/%s/tcp/%s", relayHost, relayPort))
	if err != nil {
		return 0, fmt.Errorf("bench: relay multiaddr: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := receiver.Connect(ctx, peer.AddrInfo{ID: sender.ID(), Addrs: []multiaddr.Multiaddr{addr}}); err != nil {
		return 0, fmt.Errorf("bench: libp2p connection through the relay: %w", err)
	}
	s, err := receiver.NewStream(ctx, sender.ID(), bulkProtocol)
	if err != nil {
		return 0, fmt.Errorf("bench: libp2p stream through the relay: %w", err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(2 * time.Minute))
	return readRate(s, size, start, "libp2p stream through the relay")
}
