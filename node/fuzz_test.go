package node

import (
	"testing"

	"cheops/scope"

	"github.com/libp2p/go-libp2p/core/peer"
)

// FuzzDecodeRecord feeds arbitrary membership messages to the decoder:
// it must never panic, and whatever it accepts is signed by the peer it
// names and carries a valid site name.
func FuzzDecodeRecord(f *testing.F) {
	signer := peer.ID("12D3KooWsigner")
	f.Add([]byte(`{"site":"paris","peer":"12D3KooWsigner","addrs":["/ip4/127.0.0.1/tcp/1"],"rtt_ms":{"berlin":3}}`))
	f.Add([]byte(`{"site":"9bad","peer":"x"}`))
	f.Add([]byte(`{"site":"paris","peer":"12D3KooWsigner","addrs":["/ip4/nope"]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data, signer)
		if err != nil {
			return
		}
		if r.Peer != signer {
			t.Fatalf("accepted a record for %s signed by %s", r.Peer, signer)
		}
		if scope.CheckName("site", r.Site) != nil {
			t.Fatalf("accepted site name %q", r.Site)
		}
	})
}
