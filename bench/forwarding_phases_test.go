package bench

import (
	"maps"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// PhasesEnv selects the forwarding scenario's phases; unset, all of
// them; a word it does not know is refused, not ignored.
func TestForwardingPhases(t *testing.T) {
	for _, tc := range []struct{ env, want string }{
		{"", "bodies creates latency"},
		{"bodies", "bodies"},
		{" latency, bodies ", "bodies latency"},
		{"latency creates", "creates latency"},
		{"body", "error"},
	} {
		t.Setenv(PhasesEnv, tc.env)
		got, err := forwardingPhases()
		s := strings.Join(slices.Sorted(maps.Keys(got)), " ")
		if err != nil {
			s = "error"
		}
		if s != tc.want {
			t.Errorf("%s=%q: %q, want %q", PhasesEnv, tc.env, s, tc.want)
		}
	}
}

// The remote path's bound adds the libp2p link's CPU per MiB to the
// direct path's, over the machine's cores.
func TestRemoteBound(t *testing.T) {
	r := &ForwardingResult{P2PCPU: 2000, BodyCPU: map[string]map[string]float64{
		pathDirect + " GET": {"bench": 1900, "paris": 100},
		pathDirect + " PUT": {"bench": 3000},
	}}
	b, ok := r.remoteBound()
	if !ok {
		t.Fatal("no bound")
	}
	cores := float64(runtime.NumCPU()) * 1e6
	if want := [2]float64{math.Round(cores / 4000), math.Round(cores / 5000)}; b != want {
		t.Errorf("bound %v, want %v", b, want)
	}
	if _, ok := (&ForwardingResult{}).remoteBound(); ok {
		t.Error("a bound without the link's figure")
	}
}
