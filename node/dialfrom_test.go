package node

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	manet "github.com/multiformats/go-multiaddr/net"
)

// TestConnectionsComeFromTheListenAddress: a node dials from the address
// it listens on, so that the other side (a firewall rule, the benchmarks'
// WAN emulation, which tells sites apart by source address) sees its
// connections come from the site. The check of a taken port must not
// cost this.
func TestConnectionsComeFromTheListenAddress(t *testing.T) {
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
	start := func(site, ip string, peers ...string) *Node {
		c := fastConfig(site, dirs[site], trust, peers...)
		c.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/0", ip)}
		n, err := New(context.Background(), c)
		if err != nil {
			t.Fatalf("start %s: %v", site, err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
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
