package node

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/bench/wan"
	"cheops/scope"
)

// BenchmarkReconnectAfterHeal measures, over the emulated WAN, the time
// from the heal of a cut between two halves of five sites (default
// probing, as agents run) to every site seeing every other up again. The
// issue's target is 2 RTT + 0.3 s.
func BenchmarkReconnectAfterHeal(b *testing.B) {
	for _, rtt := range []time.Duration{0, 20 * time.Millisecond, 80 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%v", rtt), func(b *testing.B) {
			sites := []string{"s0", "s1", "s2", "s3", "s4"}
			nodes := startWANNodes(b, sites, rtt, nil)
			left, right := sites[:2], sites[2:]
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				nodes.net.Cut(left, right)
				waitAll(b, nodes.nodes, sites, func(o, s string) bool {
					same := (o < "s2") == (s < "s2")
					return same || nodes.nodes[o].View().Sites[s].State == scope.Down
				})
				b.StartTimer()
				healed := time.Now()
				nodes.net.Heal()
				waitAll(b, nodes.nodes, sites, func(o, s string) bool { return nodes.nodes[o].View().Sites[s].State == scope.Up })
				total += time.Since(healed)
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "reconnect-ms")
			b.ReportMetric(float64((2*rtt + 300*time.Millisecond).Milliseconds()), "target-ms")
		})
	}
}

type wanNodes struct {
	net   *wan.Network
	nodes map[string]*Node
}

// startWANNodes starts one node per site behind the emulated WAN, each
// trusting the others, with default probing changed by configure (nil:
// none), and waits until every site sees every other up.
func startWANNodes(b testing.TB, sites []string, rtt time.Duration, configure func(*Config)) wanNodes {
	b.Helper()
	w := wanNodes{net: wan.New(nil), nodes: map[string]*Node{}}
	b.Cleanup(func() { w.net.Close() })
	ids := map[string]peer.ID{}
	dirs := map[string]string{}
	var trust []peer.ID
	for _, s := range sites {
		dirs[s] = filepath.Join(b.TempDir(), s)
		_, id, err := LoadIdentity(dirs[s])
		if err != nil {
			b.Fatal(err)
		}
		ids[s] = id
		trust = append(trust, id)
	}
	announce := map[string]string{}
	listen := map[string]string{}
	for i, s := range sites {
		l, err := net.Listen("tcp", net.JoinHostPort(wan.SiteAddr(i), "0"))
		if err != nil {
			b.Fatal(err)
		}
		listen[s] = l.Addr().String()
		l.Close()
		w.net.AddSite(s, wan.SiteAddr(i))
		relay, err := w.net.Expose(s, wan.RelayAddr(i), listen[s])
		if err != nil {
			b.Fatal(err)
		}
		announce[s] = relay
	}
	w.net.SetRTT(rtt)
	for i, s := range sites {
		c := DefaultConfig()
		c.Site, c.DataDir, c.Trust = s, dirs[s], trust
		host, port, _ := net.SplitHostPort(listen[s])
		c.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/%s", host, port)}
		rh, rp, _ := net.SplitHostPort(announce[s])
		c.Announce = []string{fmt.Sprintf("/ip4/%s/tcp/%s", rh, rp)}
		if i > 0 {
			ph, pp, _ := net.SplitHostPort(announce[sites[0]])
			c.Peers = []string{fmt.Sprintf("/ip4/%s/tcp/%s/p2p/%s", ph, pp, ids[sites[0]])}
		}
		c.Logger = testLogger
		if configure != nil {
			configure(&c)
		}
		n, err := New(context.Background(), c)
		if err != nil {
			b.Fatalf("start %s: %v", s, err)
		}
		b.Cleanup(func() { n.Close() })
		w.nodes[s] = n
	}
	waitAll(b, w.nodes, sites, func(o, s string) bool { return w.nodes[o].View().Sites[s].State == scope.Up })
	return w
}

// waitAll polls, every 5 ms for at most a minute, until ok holds for
// every ordered pair of distinct sites.
func waitAll(b testing.TB, nodes map[string]*Node, sites []string, ok func(observer, subject string) bool) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		all := true
		for _, o := range sites {
			for _, s := range sites {
				if o != s && !ok(o, s) {
					all = false
				}
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("sites did not reach the expected states within a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
