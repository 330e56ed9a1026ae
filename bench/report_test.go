package bench

import (
	"bytes"
	"strings"
	"testing"
)

// Every target of a table says met or MISSED, and Missed lists exactly
// the missed ones: selectivity's ratio of 0.26 against 0.25 is missed.
func TestSelectivityVerdicts(t *testing.T) {
	for _, tc := range []struct {
		ratio  float64
		leaked int64
		missed int
		lines  []string
	}{
		{0.09, 0, 0, []string{"(target <= 0.25): met", "(target 0): met"}},
		{0.26, 0, 1, []string{"(target <= 0.25): MISSED", "(target 0): met"}},
		{0.10, 12, 1, []string{"(target <= 0.25): met", "(target 0): MISSED"}},
	} {
		r := SelectivityResult{Ratio: tc.ratio, RatioTarget: 0.25, LeakedBytes: tc.leaked}
		var b bytes.Buffer
		r.Table(&b)
		for _, l := range tc.lines {
			if !strings.Contains(b.String(), l) {
				t.Errorf("ratio %.2f, leaked %d: table lacks %q:\n%s", tc.ratio, tc.leaked, l, b.String())
			}
		}
		if got := r.Missed(); len(got) != tc.missed {
			t.Errorf("ratio %.2f, leaked %d: missed %q, want %d", tc.ratio, tc.leaked, got, tc.missed)
		}
	}
}
