package node

import (
	"runtime/pprof"
	"strings"
	"testing"
)

// TestHostRunsNoAutoNATProber checks that a site's libp2p host runs no
// ambient AutoNAT prober (node.go, ForceReachabilityPublic): in go-libp2p
// v0.51.0 the prober's Close can wait forever for identify, and the
// agent's Close with it.
func TestHostRunsNoAutoNATProber(t *testing.T) {
	c := newCluster(t, "paris")
	c.start("paris")
	var stacks strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&stacks, 1); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stacks.String(), "autonat.(*AmbientAutoNAT).background") {
		t.Fatal("the host runs AutoNAT's ambient prober")
	}
}
