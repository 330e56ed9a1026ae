package node

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	reuseport "github.com/libp2p/go-reuseport"
	manet "github.com/multiformats/go-multiaddr/net"
)

// TestConnectionsComeFromTheListenAddress: a node dials from the address
// it listens on, so that the other side (a firewall rule, the benchmarks'
// WAN emulation, which tells sites apart by source address) sees its
// connections come from the site. The check of a taken port must not
// cost this.
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
		if got.String() != want.String() {
			t.Fatalf("a sees b's connection from %s, want b's listen address %s", got, want)
		}
		return
	}
	t.Fatal("a has no inbound connection from b")
}

// TestConnectionsComeFromTheSiteWhenItsPortIsBusy: when the listen port
// cannot be reused for a dial (the same pair of addresses still busy: a
// connection to that peer closing, a redial right after a heal), the
// node dials from another port of the same address, not from an address
// the kernel picks (127.0.0.1 here), which a cut of the benchmarks' WAN
// emulation or a firewall rule keyed on the site's address did not
// apply to.
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
			t.Fatalf("b's connection came from its listen port %s, which the test held: the fallback was not taken", c.RemoteMultiaddr())
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
