package bench

import (
	"strings"
	"testing"
	"time"
)

// Every repetition is judged against the bounds: reconnected ≤ 2
// RTT + 300 ms, catalogs ≤ 500 ms + 2 RTT after reconnecting,
// applications ≤ 2 s on loopback.
func TestSoakJudgesEveryRepetition(t *testing.T) {
	ms := time.Millisecond
	r := &SoakResult{Options: SoakOptions{Sites: 5}, Runs: []SoakRun{
		{Shape: "halves", RTT: 0, Reconnected: 30 * ms, Catalog: 400 * ms, Applied: 1500 * ms, Converged: true},
		// 1,781 ms after reconnecting at 80 ms RTT: over 660 ms.
		{Shape: "flapping", RTT: 80 * ms, Reconnected: 14 * ms, Catalog: 1795 * ms, Applied: 1851 * ms, Converged: true},
		// Reconnected late at 20 ms RTT (> 340 ms); applications late
		// off loopback are not judged.
		{Shape: "alone", RTT: 20 * ms, Reconnected: 400 * ms, Catalog: 600 * ms, Applied: 2500 * ms, Converged: true},
		{Shape: "one-way", RTT: 0, Reconnected: 20 * ms, Catalog: 300 * ms, Applied: 2100 * ms, Converged: true},
		// A flap no site saw: the last change of state (a probe's,
		// late) came after the catalogs agreed, so "after reconnect" is
		// 0 and says nothing; from the heal, 850 ms is over 300 + 500.
		{Shape: "flapping", RTT: 0, Reconnected: 900 * ms, Catalog: 850 * ms, Applied: 1200 * ms, Converged: true},
	}}
	missed := r.Missed()
	want := []string{
		"rep 2 (flapping, 80 ms RTT): catalogs after reconnect 1781 ms > 660 ms",
		"rep 2 (flapping, 80 ms RTT): catalogs after the heal 1795 ms > 1120 ms",
		"rep 3 (alone, 20 ms RTT): reconnected 400 ms > 340 ms",
		"rep 4 (one-way, 0 ms RTT): applications after heal 2100 ms > 2000 ms",
		"rep 5 (flapping, 0 ms RTT): reconnected 900 ms > 300 ms",
		"rep 5 (flapping, 0 ms RTT): catalogs after the heal 850 ms > 800 ms",
	}
	if strings.Join(missed, "\n") != strings.Join(want, "\n") {
		t.Fatalf("missed:\n%s\nwant:\n%s", strings.Join(missed, "\n"), strings.Join(want, "\n"))
	}
	var b strings.Builder
	r.Table(&b)
	for _, s := range []string{"MISSED", "targets missed: 6", "all"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
}
