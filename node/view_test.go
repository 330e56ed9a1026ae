package node

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/scope"
)

// viewNode is a bare node (no host) of site paris knowing the given
// sites, each answered once with an RTT of 10 ms.
func viewNode(t testing.TB, sites ...string) (*Node, map[string]peer.ID) {
	t.Helper()
	n := bareNode(fastConfig("paris", t.TempDir(), nil))
	ids := map[string]peer.ID{}
	for i, s := range sites {
		p := peer.ID(fmt.Sprintf("peer-%d", i))
		ids[s] = p
		n.mu.Lock()
		ps := n.peerLocked(p)
		ps.site = s
		ps.reported = map[string]time.Duration{}
		for _, o := range sites {
			if o != s {
				ps.reported[o] = 20 * time.Millisecond
			}
		}
		n.viewChangedLocked()
		n.mu.Unlock()
		n.observe(p, time.Now(), 10*time.Millisecond, nil, true, false)
	}
	return n, ids
}

// The view is kept between probes, but what one caller changes in its
// view (a site marked down, as the forwarder's withDown does, a site
// dropped or added) never shows in another caller's, and a probe's
// outcome shows in the next view.
func TestViewCopyOnWrite(t *testing.T) {
	n, ids := viewNode(t, "berlin", "rome")
	mine := n.View()
	if mine.Sites["berlin"].State != scope.Up || len(mine.Sites) != 3 {
		t.Fatalf("view %+v: want paris, berlin and rome, berlin up", mine.Sites)
	}
	info := mine.Sites["berlin"]
	info.State = scope.Down
	mine.Sites["berlin"] = info
	delete(mine.Sites, "rome")
	mine.Sites["mallory"] = scope.SiteInfo{Name: "mallory", State: scope.Up}

	other := n.View()
	if other.Sites["berlin"].State != scope.Up {
		t.Errorf("another caller's change shows: berlin %v", other.Sites["berlin"].State)
	}
	if _, ok := other.Sites["rome"]; !ok {
		t.Error("another caller's change shows: rome is gone")
	}
	if _, ok := other.Sites["mallory"]; ok {
		t.Error("another caller's change shows: mallory is there")
	}
	if d, ok := other.RTT("paris", "berlin"); !ok || d != 10*time.Millisecond {
		t.Errorf("RTT paris-berlin %v (%v), want 10ms", d, ok)
	}

	// A probe's outcome is in the next view: a new RTT, then misses
	// until berlin is down.
	n.observe(ids["berlin"], time.Now(), time.Millisecond, nil, true, false)
	if d, _ := n.View().RTT("paris", "berlin"); d == 10*time.Millisecond {
		t.Errorf("RTT paris-berlin still %v after a probe of 1ms", d)
	}
	for range n.cfg.DownAfter {
		n.observe(ids["berlin"], time.Now(), 0, nil, false, true)
	}
	if st := n.View().Sites["berlin"].State; st != scope.Down {
		t.Errorf("berlin %v after %d misses, want down", st, n.cfg.DownAfter)
	}
}

// Callers read and change their views while probes change the node's
// (go test -race).
func TestViewConcurrentCallers(t *testing.T) {
	n, ids := viewNode(t, "berlin", "rome")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				v := n.View()
				if v.Sites["paris"].State != scope.Up {
					t.Error("paris is not up in its own view")
					return
				}
				info := v.Sites["rome"]
				info.State = scope.Down
				v.Sites["rome"] = info
				_, _ = v.RTT("berlin", "rome")
			}
		}()
	}
	for i := range 200 {
		n.observe(ids["berlin"], time.Now(), time.Duration(i+1)*time.Millisecond, nil, true, false)
		n.observe(ids["rome"], time.Now(), time.Duration(i+1)*time.Millisecond, nil, true, false)
	}
	close(stop)
	wg.Wait()
	if st := n.View().Sites["rome"].State; st != scope.Up {
		t.Errorf("rome %v: a caller's change showed", st)
	}
}

// BenchmarkView is one View call, as every planned request makes, with
// nothing changed since the last.
func BenchmarkView(b *testing.B) {
	for _, sites := range []int{2, 10, 100} {
		b.Run(fmt.Sprintf("sites=%d", sites), func(b *testing.B) {
			var names []string
			for i := range sites - 1 {
				names = append(names, fmt.Sprintf("s%03d", i))
			}
			n, _ := viewNode(b, names...)
			b.ReportAllocs()
			for b.Loop() {
				_ = n.View()
			}
		})
	}
}
