package node

import (
	"testing"
	"time"
)

// What makes a site publish its record before the refresh is due.
func TestRecordChanged(t *testing.T) {
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	base := Record{Site: "paris", Addrs: []string{"/ip4/10.0.0.1/tcp/4001"}, Started: started,
		RTTms: map[string]float64{"berlin": 20, "rome": 0.3}}
	for _, tc := range []struct {
		name   string
		change func(*Record)
		want   recordChange
	}{
		{"same", func(*Record) {}, changedNothing},
		{"rtt within a quarter", func(r *Record) { r.RTTms["berlin"] = 24 }, changedNothing},
		{"rtt by more than a quarter", func(r *Record) { r.RTTms["berlin"] = 26 }, changedRTT},
		{"rtt down by more than a quarter", func(r *Record) { r.RTTms["berlin"] = 14 }, changedRTT},
		{"LAN jitter under a millisecond", func(r *Record) { r.RTTms["rome"] = 1.2 }, changedNothing},
		{"LAN RTT up by milliseconds", func(r *Record) { r.RTTms["rome"] = 3 }, changedRTT},
		{"a site reached", func(r *Record) { r.RTTms["oslo"] = 5 }, changedMembers},
		{"a site lost", func(r *Record) { delete(r.RTTms, "rome") }, changedMembers},
		{"a site for another", func(r *Record) { delete(r.RTTms, "rome"); r.RTTms["oslo"] = 0.3 }, changedMembers},
		{"a suspect", func(r *Record) { r.Suspects = []string{"rome"} }, changedMembers},
		{"an address", func(r *Record) { r.Addrs = append(r.Addrs, "/ip4/10.0.0.2/tcp/4001") }, changedMembers},
		{"a restart", func(r *Record) { r.Started = started.Add(time.Hour) }, changedMembers},
	} {
		cur := base
		cur.RTTms = map[string]float64{}
		for k, v := range base.RTTms {
			cur.RTTms[k] = v
		}
		cur.Addrs = append([]string(nil), base.Addrs...)
		tc.change(&cur)
		if got := recordChanged(base, cur); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
