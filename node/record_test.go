package node

import (
	"testing"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

// What makes a site publish its record before the refresh is due.
func TestRecordChanged(t *testing.T) {
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	coord := func(x float64) *coordinate.Coordinate {
		c := coordinate.NewCoordinate(coordConfig())
		c.Vec[0] = x
		return c
	}
	base := Record{Site: "paris", Addrs: []string{"/ip4/10.0.0.1/tcp/4001"}, Started: started, Coord: coord(0.020)}
	for _, tc := range []struct {
		name   string
		change func(*Record)
		want   bool
	}{
		{"same", func(*Record) {}, false},
		{"coordinate moved (published with the refresh)", func(r *Record) { r.Coord = coord(0.080) }, false},
		{"no coordinate yet", func(r *Record) { r.Coord = nil }, true},
		{"an address", func(r *Record) { r.Addrs = append(r.Addrs, "/ip4/10.0.0.2/tcp/4001") }, true},
		{"a restart", func(r *Record) { r.Started = started.Add(time.Hour) }, true},
	} {
		cur := base
		cur.Coord = base.Coord.Clone()
		cur.Addrs = append([]string(nil), base.Addrs...)
		tc.change(&cur)
		if got := recordChanged(base, cur); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// A coordinate from the network is used only if it is sane.
func TestValidCoord(t *testing.T) {
	dims := int(coordConfig().Dimensionality)
	good := coordinate.NewCoordinate(coordConfig())
	good.Vec[1] = 0.05
	if !validCoord(good, dims) {
		t.Fatal("a sane coordinate refused")
	}
	for name, mutate := range map[string]func(*coordinate.Coordinate){
		"other dimensions": func(c *coordinate.Coordinate) { c.Vec = c.Vec[:2] },
		"not finite":       func(c *coordinate.Coordinate) { c.Vec[0] = 1 / zero() },
		"far away":         func(c *coordinate.Coordinate) { c.Vec[3] = 60 },
		"negative height":  func(c *coordinate.Coordinate) { c.Height = -1 },
		"huge adjustment":  func(c *coordinate.Coordinate) { c.Adjustment = -100 },
		"negative error":   func(c *coordinate.Coordinate) { c.Error = -1 },
	} {
		c := good.Clone()
		mutate(c)
		if validCoord(c, dims) {
			t.Errorf("%s: accepted", name)
		}
	}
	if validCoord(nil, dims) {
		t.Error("nil accepted")
	}
}

func zero() float64 { return 0 }
