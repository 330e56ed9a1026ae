package node

import (
	"fmt"
	"testing"
	"time"

	"cheops/scope"
)

// samplesOf is how many answers with a coordinate n's probes took.
func samplesOf(n *Node) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.samples
}

// TestProbesShareAKeptStream: a pair's probes run one after the other on
// one stream (ProbeKeptProtocol) instead of a stream each, and every
// answer on it carries the peer's coordinate, not the first only.
func TestProbesShareAKeptStream(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	paris := c.start("paris")
	c.start("berlin", paris.Addrs()[0])
	eventually(t, 10*time.Second, "paris sees berlin up", func() error { return sees(paris, "berlin", scope.Up) })

	probes0, streams0, failed0 := paris.probes.Load(), paris.stats.probeStreams.Load(), paris.stats.failed.Load()
	samples0 := samplesOf(paris)
	const want = 20
	eventually(t, 30*time.Second, fmt.Sprintf("%d more probes of berlin", want), func() error {
		if got := paris.probes.Load() - probes0; got < want {
			return fmt.Errorf("%d probes", got)
		}
		return nil
	})
	probes, failed := paris.probes.Load()-probes0, paris.stats.failed.Load()-failed0
	// One stream for all of them, and one more after each probe that
	// failed (a timeout on a loaded machine resets the stream), not one
	// each.
	if opened := paris.stats.probeStreams.Load() - streams0; opened > 1+failed {
		t.Fatalf("paris opened %d probe streams for %d probes, %d of which failed (%s)", opened, probes, failed, &paris.stats)
	}
	// Every answer on the kept stream carries berlin's coordinate: a
	// stream answering with its first frame only would bring one. (A
	// probe that ran while paris was starved takes no sample: waited
	// for, not counted at once.)
	eventually(t, 30*time.Second, "berlin's coordinate in the answers", func() error {
		if got := samplesOf(paris) - samples0; got < want/4 {
			return fmt.Errorf("%d samples in %d probes (%s)", got, paris.probes.Load()-probes0, &paris.stats)
		}
		return nil
	})
}

// TestKeptProbeStreamEndedByPeer: when the peer ends a kept probe stream
// (its wait ran out, it restarted), the next probe is made again on a new
// stream: no failure is counted and the peer stays up.
func TestKeptProbeStreamEndedByPeer(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	paris := c.start("paris")
	berlin := c.start("berlin", paris.Addrs()[0])
	eventually(t, 10*time.Second, "paris sees berlin up", func() error { return sees(paris, "berlin", scope.Up) })
	eventually(t, 10*time.Second, "paris keeps a probe stream to berlin", func() error {
		if paris.keptProbes.Len() == 0 {
			return fmt.Errorf("none kept")
		}
		return nil
	})

	refused := func() int64 { return paris.stats.failed.Load() - paris.stats.timedOut.Load() }
	refused0, streams0 := refused(), paris.stats.probeStreams.Load()
	ended := 0
	for _, conn := range berlin.host.Network().ConnsToPeer(paris.host.ID()) {
		for _, s := range conn.GetStreams() {
			if s.Protocol() == ProbeKeptProtocol {
				_ = s.Reset()
				ended++
			}
		}
	}
	if ended == 0 {
		t.Fatal("berlin holds no kept probe stream of paris")
	}
	eventually(t, 10*time.Second, "paris probes berlin on a new stream", func() error {
		if paris.stats.probeStreams.Load() == streams0 {
			return fmt.Errorf("no new probe stream")
		}
		return nil
	})
	probes0 := paris.probes.Load()
	eventually(t, 10*time.Second, "paris probes berlin again", func() error {
		if paris.probes.Load() < probes0+3 {
			return fmt.Errorf("%d probes since", paris.probes.Load()-probes0)
		}
		return nil
	})
	if got := refused() - refused0; got != 0 {
		t.Fatalf("%d probes failed without timing out after berlin ended the stream (%s)", got, &paris.stats)
	}
	if err := sees(paris, "berlin", scope.Up); err != nil {
		t.Fatal(err)
	}
}

// TestCalmProbeLoopWakesSeldom: with the default intervals and no peer in
// trouble, the probe loop wakes for its rounds and every calmTick, not
// every RedialInterval (50 ms), and its rounds keep their pace.
func TestCalmProbeLoopWakesSeldom(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	defaults := func(cfg *Config) {
		d := DefaultConfig()
		cfg.ProbeInterval, cfg.ProbeTimeout = d.ProbeInterval, d.ProbeTimeout
		cfg.RedialInterval, cfg.MaxRedialBackoff = d.RedialInterval, d.MaxRedialBackoff
	}
	paris := c.startNode("paris", c.dirs["paris"], defaults)
	c.startNode("berlin", c.dirs["berlin"], defaults, paris.Addrs()[0])
	eventually(t, 20*time.Second, "paris sees berlin up", func() error { return sees(paris, "berlin", scope.Up) })

	calm := paris.calmTick(paris.cfg.RedialInterval)
	if calm <= 4*paris.cfg.RedialInterval {
		t.Fatalf("calm tick %v: not calmer than RedialInterval %v", calm, paris.cfg.RedialInterval)
	}
	wakes0, probes0, at := paris.stats.loopWakes.Load(), paris.probes.Load(), time.Now()
	const window = 4 * time.Second
	time.Sleep(window)
	wakes, probes, took := paris.stats.loopWakes.Load()-wakes0, paris.probes.Load()-probes0, time.Since(at)
	// Every calm tick and every round, with room for a wake on a
	// connection event: a quarter of what a loop woken every
	// RedialInterval makes.
	if most := int64(took/calm) + int64(took/paris.cfg.ProbeInterval) + 4; wakes > most {
		t.Fatalf("the probe loop woke %d times in %v, want at most %d (calm tick %v; %s)", wakes, took, most, calm, &paris.stats)
	}
	if least := int64(window/paris.cfg.ProbeInterval) - 1; probes < least {
		t.Fatalf("%d probes of berlin in %v, want at least %d", probes, took, least)
	}
}
