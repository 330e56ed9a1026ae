package node

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	reuseport "github.com/libp2p/go-reuseport"
	manet "github.com/multiformats/go-multiaddr/net"
)

// TestConnectionsComeFromTheListenAddress: a node dials from the IP
// address it listens on, so that the other side (a firewall rule, the
// benchmarks' WAN emulation, which tells sites apart by source address)
// sees its connections come from the site; from another port than its
// listen port (see TestSimultaneousDialsConnect). The check of a taken
// port must not cost this.
func TestConnectionsComeFromTheListenAddress(t *testing.T) {
	start := twoSitesOn(t)
	a := start("a", "127.0.0.21")
	aAddr := a.host.Network().ListenAddresses()[0]
	b := start("b", "127.0.0.22", fmt.Sprintf("%s/p2p/%s", aAddr, a.host.ID()))
	bAddr := b.host.Network().ListenAddresses()[0]
	deadline := time.Now().Add(10 * time.Second)
	for len(a.host.Network().ConnsToPeer(b.host.ID())) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("b did not connect to a within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range a.host.Network().ConnsToPeer(b.host.ID()) {
		if c.Stat().Direction.String() != "Inbound" {
			continue
		}
		got, err := manet.ToNetAddr(c.RemoteMultiaddr())
		if err != nil {
			t.Fatal(err)
		}
		want, _ := manet.ToNetAddr(bAddr)
		if g, w := got.(*net.TCPAddr), want.(*net.TCPAddr); !g.IP.Equal(w.IP) || g.Port == w.Port {
			t.Fatalf("a sees b's connection from %s, want b's listen IP from another port than its listen address %s", got, want)
		}
		return
	}
	t.Fatal("a has no inbound connection from b")
}

// TestConnectionsComeFromTheSiteWhenItsPortIsBusy: with the listen port
// busy towards the peer (the same pair of addresses held: a connection
// to that peer closing, a redial right after a heal), the node still
// dials from its own address, not from one the kernel picks (127.0.0.1
// here), which a cut of the benchmarks' WAN emulation or a firewall rule
// keyed on the site's address did not apply to.
func TestConnectionsComeFromTheSiteWhenItsPortIsBusy(t *testing.T) {
	start := twoSitesOn(t)
	a, b := start("a", "127.0.0.23"), start("b", "127.0.0.24")
	aNet, _ := manet.ToNetAddr(a.host.Network().ListenAddresses()[0])
	bNet, _ := manet.ToNetAddr(b.host.Network().ListenAddresses()[0])
	// b's listen address and port to a's: taken by a plain connection,
	// as a closing one would hold them.
	busy := net.Dialer{LocalAddr: bNet, Control: reuseport.Control}
	hold, err := busy.Dial("tcp", aNet.String())
	if err != nil {
		t.Fatalf("hold b's port towards a: %v", err)
	}
	defer hold.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.host.Connect(ctx, peer.AddrInfo{ID: a.host.ID(), Addrs: a.host.Network().ListenAddresses()}); err != nil {
		t.Fatalf("b connects to a with its port busy: %v", err)
	}
	for _, c := range a.host.Network().ConnsToPeer(b.host.ID()) {
		got, err := manet.ToIP(c.RemoteMultiaddr())
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(bNet.(*net.TCPAddr).IP) {
			t.Fatalf("a sees b's connection from %s, want b's address %s", got, bNet.(*net.TCPAddr).IP)
		}
		if c.RemoteMultiaddr().String() == b.host.Network().ListenAddresses()[0].String() {
			t.Fatalf("b's connection came from its listen port %s, which the test held", c.RemoteMultiaddr())
		}
		return
	}
	t.Fatal("a has no connection from b")
}

// twoSitesOn returns a function that starts site a or b, trusting each
// other, listening on the given IP, with the given peers.
func twoSitesOn(t *testing.T) func(site, ip string, peers ...string) *Node {
	dirs := map[string]string{}
	var trust []peer.ID
	for _, s := range []string{"a", "b"} {
		dirs[s] = filepath.Join(t.TempDir(), s)
		_, id, err := LoadIdentity(dirs[s])
		if err != nil {
			t.Fatal(err)
		}
		trust = append(trust, id)
	}
	return func(site, ip string, peers ...string) *Node {
		t.Helper()
		c := fastConfig(site, dirs[site], trust, peers...)
		c.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/0", ip)}
		n, err := New(context.Background(), c)
		if err != nil {
			t.Fatalf("start %s: %v", site, err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
}

// TestSimultaneousDialsConnect: two sites that dial each other at the
// same moment both end up connected. Dialling from their listen ports,
// the two dials named the same TCP 4-tuple; when the kernel joined them
// into one connection (a TCP simultaneous open), both sides started the
// security handshake as its initiator and both dials failed ("tls:
// received unexpected handshake message of type *tls.clientHelloMsg when
// waiting for *tls.serverHelloMsg"), after which libp2p's dial backoff
// kept the two apart. Without the fix, 2 to 5 of 30 rounds failed on
// loopback; each round is a new pair of sites (a redial of the same pair
// would find the pair of addresses in TIME_WAIT and dial from elsewhere).
func TestSimultaneousDialsConnect(t *testing.T) {
	const rounds = 60
	var failed []string
	for i := range rounds {
		start := twoSitesOn(t)
		a, b := start("a", "127.0.0.25"), start("b", "127.0.0.26")
		ai := peer.AddrInfo{ID: a.host.ID(), Addrs: a.host.Network().ListenAddresses()}
		bi := peer.AddrInfo{ID: b.host.ID(), Addrs: b.host.Network().ListenAddresses()}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var wg sync.WaitGroup
		var errA, errB error
		both := make(chan struct{})
		wg.Add(2)
		go func() { defer wg.Done(); <-both; errA = a.host.Connect(ctx, bi) }()
		go func() { defer wg.Done(); <-both; errB = b.host.Connect(ctx, ai) }()
		close(both)
		wg.Wait()
		cancel()
		if errA != nil || errB != nil {
			failed = append(failed, fmt.Sprintf("round %d: a→b: %v; b→a: %v", i, errA, errB))
		}
		a.Close()
		b.Close()
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d rounds of two sites dialling each other at once failed, e.g. %s", len(failed), rounds, failed[0])
	}
}
