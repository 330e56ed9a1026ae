package node

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"cheops/scope"
)

// Five sites on a line behind the emulated WAN (one-way delays the
// distances between them, 5 to 40 ms): from paris's view, the RTT between
// two other sites, which paris never measures, comes from their network
// coordinates and is within a quarter (or 5 ms) of the emulated one plus
// the delay the machine adds to every sample (see excess; about 0 on an
// idle machine); paris's own RTTs are measured.
func TestCoordinatesEstimateRTT(t *testing.T) {
	at := map[string]time.Duration{"paris": 0, "lyon": 5 * time.Millisecond, "milan": 10 * time.Millisecond,
		"rome": 20 * time.Millisecond, "tunis": 40 * time.Millisecond}
	sites := []string{"paris", "lyon", "milan", "rome", "tunis"}
	// Probes every 400 ms, not faster: every sample crosses the
	// in-process WAN emulation and a dozen goroutine hand-offs, and at
	// 100 ms the process (under -race) kept itself busy enough that on a
	// loaded machine every sample carried 100–200 ms of its own queueing,
	// which no filter of the samples removes (see rttFilter for the
	// delays that come and go).
	w := startWANNodes(t, sites, 0, func(c *Config) {
		c.ProbeInterval, c.ProbeTimeout = 400*time.Millisecond, time.Second
		c.AnnounceInterval = 300 * time.Millisecond
	})
	want := func(a, b string) time.Duration { return 2 * max(at[a]-at[b], at[b]-at[a]) }
	for _, a := range sites {
		for _, b := range sites {
			if a < b {
				w.net.SetDelay(a, b, want(a, b)/2)
			}
		}
	}
	off := func(got, want time.Duration) bool {
		d := max(got-want, want-got)
		return d > 5*time.Millisecond && d > want/4
	}
	paris := w.nodes["paris"]
	var last error
	deadline := time.Now().Add(60 * time.Second)
	// What the machine adds: every sample crosses the in-process WAN
	// emulation and the sites' goroutines, and on a loaded machine each
	// carries queueing that no filter removes (it is in every sample).
	// paris measures its own RTTs; their median excess over the emulated
	// ones is that delay, which the others' samples carry too. About 0 on
	// an idle machine, where the test asks what it always asked.
	excess := func() time.Duration {
		var ex []time.Duration
		for _, st := range paris.Sites() {
			if !st.Self && st.RTT > 0 {
				ex = append(ex, max(st.RTT-want("paris", st.Site), 0))
			}
		}
		if len(ex) == 0 {
			return 0
		}
		slices.Sort(ex)
		return ex[len(ex)/2]
	}
	for {
		last = nil
		v := paris.View()
		extra := excess()
		for _, a := range sites {
			for _, b := range sites {
				if a >= b {
					continue
				}
				got, ok := v.RTT(a, b)
				if !ok || off(got, want(a, b)+extra) {
					last = fmt.Errorf("paris's view: RTT %s-%s %v (known %v), want %v (emulated %v, measured excess %v)", a, b, got, ok, want(a, b)+extra, want(a, b), extra)
				}
			}
		}
		if last == nil {
			break
		}
		if time.Now().After(deadline) {
			for _, a := range sites {
				nd := w.nodes[a]
				for _, st := range nd.Sites() {
					if !st.Self {
						t.Logf("%s measures %s at %v (health multiplier %d)", a, st.Site, st.RTT.Round(100*time.Microsecond), nd.HealthMultiplier())
					}
				}
			}
			t.Fatal(last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	v := paris.View()
	for _, a := range sites[1:] {
		for _, b := range sites[1:] {
			if a < b {
				got, _ := v.RTT(a, b)
				t.Logf("estimated %s-%s %v, emulated %v", a, b, got.Round(100*time.Microsecond), want(a, b))
			}
		}
	}
	if v.Sites["paris"].State != scope.Up {
		t.Fatal("paris is not up in its own view")
	}
}
