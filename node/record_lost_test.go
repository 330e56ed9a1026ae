package node

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"

	"cheops/scope"
)

// dropRecords makes n reset the first k record streams it receives (k < 0:
// every one), as a record push lost under load (its stream timed out, the
// connected event dropped): the sender believes nothing of it.
func dropRecords(n *Node, k int) {
	var seen atomic.Int64
	for _, id := range []protocol.ID{RecordProtocol, RecordExchangeProtocol} {
		n.host.SetStreamHandler(id, func(s network.Stream) {
			if k < 0 || seen.Add(1) <= int64(k) {
				_ = s.Reset()
				return
			}
			n.handleRecord(s)
		})
	}
}

// hint tells n of p and its addresses as a sites answer does (pullSites):
// a peer to probe, whose name comes with its record.
func hint(n *Node, p peer.ID, addrs []string) {
	n.mu.Lock()
	n.peerLocked(p)
	n.mu.Unlock()
	for _, a := range addrs {
		info, _ := peer.AddrInfoFromString(a)
		n.host.Peerstore().AddAddrs(p, info.Addrs, peerstore.PermanentAddrTTL)
	}
}

// A site whose record a peer missed is learned by that peer within a few
// probe rounds, not at the next publication of its record (AnnounceInterval
// times RecordRefresh, stretched on a loaded site: minutes at 100
// in-process sites, where a few (observer, site) pairs stayed "unknown"
// for three minutes). Publications and pulls are made an hour apart here,
// so only what connecting and probing do can teach it.
func TestLostRecordLearnedAgain(t *testing.T) {
	for _, tc := range []struct {
		name string
		// berlinDrops: the record streams berlin resets first (paris
		// resets every one berlin sends).
		berlinDrops int
		// berlinDials: berlin bootstraps from paris, which knows nothing
		// of it; otherwise paris learns berlin's peer from a hint and
		// dials it.
		berlinDials bool
	}{
		{"berlin's push lost", 0, false},
		// Two: the dialling side may open two connections (TCP and
		// QUIC), each with its exchange from paris; with one drop, the
		// second connection's exchange taught paris berlin's record
		// without an ask (seen in CI).
		{"both pushes lost", 2, false},
		{"both pushes lost, berlin dialled", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, "paris", "berlin")
			slow := func(cfg *Config) { cfg.AnnounceInterval = time.Hour }
			paris := c.startNode("paris", c.dirs["paris"], slow)
			dropRecords(paris, -1)
			var berlin *Node
			if tc.berlinDials {
				berlin = c.startNode("berlin", c.dirs["berlin"], func(cfg *Config) {
					slow(cfg)
					// Berlin's drops must be in place before it dials.
					cfg.Peers = nil
				})
				dropRecords(berlin, tc.berlinDrops)
				hint(berlin, paris.host.ID(), paris.Addrs())
			} else {
				berlin = c.startNode("berlin", c.dirs["berlin"], slow)
				dropRecords(berlin, tc.berlinDrops)
				hint(paris, berlin.host.ID(), berlin.Addrs())
			}
			eventually(t, 5*time.Second, "paris sees berlin up", func() error { return sees(paris, "berlin", scope.Up) })
			if asked := paris.stats.recordAsks.Load(); tc.berlinDrops > 0 && asked == 0 {
				t.Errorf("paris learned berlin without asking for its record after a probe")
			}
		})
	}
}

// A peer whose record never takes (every exchange fails here; a claim
// the bindings refuse does the same) is asked again less and less often,
// not at every probe round.
func TestRecordAsksBackOff(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	slow := func(cfg *Config) { cfg.AnnounceInterval = time.Hour }
	paris := c.startNode("paris", c.dirs["paris"], slow)
	berlin := c.startNode("berlin", c.dirs["berlin"], slow)
	dropRecords(paris, -1)
	dropRecords(berlin, -1)
	hint(paris, berlin.host.ID(), berlin.Addrs())
	eventually(t, 5*time.Second, "paris asks berlin for its record", func() error {
		if paris.stats.recordAsks.Load() == 0 {
			return fmt.Errorf("no ask yet")
		}
		return nil
	})
	// A window to count over: 30 probe rounds, in which asks spaced
	// from one round, doubling, are at most 5.
	time.Sleep(30 * paris.cfg.ProbeInterval)
	if asks := paris.stats.recordAsks.Load(); asks > 6 {
		t.Errorf("%d asks in 30 probe rounds; want them spaced out (at most 6)", asks)
	}
}
