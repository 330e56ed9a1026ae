package bench

import (
	"testing"
	"time"
)

// TestTallyJudgesTheCutsLastSecondInNoPhase: a write issued during the
// cut and answered after the heal is refused (it waited for the heal),
// unless it was issued in the cut's last second, where it is counted
// apart and judged in no phase.
func TestTallyJudgesTheCutsLastSecondInNoPhase(t *testing.T) {
	healAt := 16 * time.Second
	outs := []writeOutcome{
		{phase: 0, t: time.Second, latency: 10 * time.Millisecond, ok: true},
		{phase: 1, t: 3 * time.Second, latency: 20 * time.Millisecond, ok: true},
		{phase: 1, t: 10 * time.Second, latency: 7 * time.Second, ok: true}, // waited for the heal
		{phase: 3, t: 15900 * time.Millisecond, latency: 150 * time.Millisecond, ok: true},
		{phase: 3, t: 15950 * time.Millisecond, latency: 0, ok: false, err: "refused"},
		{phase: 2, t: 17 * time.Second, latency: 10 * time.Millisecond, ok: true},
	}
	s := tally("cheops", outs, healAt)
	if s.During.Issued != 2 || s.During.Accepted != 1 {
		t.Errorf("during the cut: %+v, want 1 of 2 accepted", s.During)
	}
	if s.Errors["answered only after the heal"] != 1 || len(s.Errors) != 1 {
		t.Errorf("errors %v, want only the write that waited for the heal", s.Errors)
	}
	if s.AtHeal.Issued != 2 || s.AtHeal.Accepted != 1 {
		t.Errorf("at the heal: %+v, want 1 of 2 accepted", s.AtHeal)
	}
	if s.Before.Accepted != 1 || s.After.Accepted != 1 || s.WithinSecond != 1 {
		t.Errorf("before %+v after %+v within 1 s %d", s.Before, s.After, s.WithinSecond)
	}
}
