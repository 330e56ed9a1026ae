package crdt

import (
	"bufio"
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// FuzzReadFrame feeds arbitrary bytes from a peer to the frame reader, the
// request decoders and the group message decoder: no panic, no frame above
// its limit, and no block that does not match its CID.
func FuzzReadFrame(f *testing.F) {
	var good bytes.Buffer
	req, _ := json.Marshal(blockRequest{Group: "a,b", Want: []string{"bafy"}})
	writeFrame(&good, req)
	f.Add(good.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0x05, 'a'})
	f.Add(encodeMessage([]byte("heads"), nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, blks, err := decodeMessage(data); err == nil {
			for _, b := range blks {
				if _, err := verifiedBlock(b.Cid(), b.RawData()); err != nil {
					t.Fatalf("decoded a block that does not match its CID: %v", err)
				}
			}
		}
		r := bufio.NewReader(bytes.NewReader(data))
		for range 4 {
			frame, err := readFrame(r, 1024)
			if err != nil {
				return
			}
			if len(frame) > 1024 {
				t.Fatalf("frame of %d bytes over the limit", len(frame))
			}
			var br blockRequest
			_ = json.Unmarshal(frame, &br)
			var lh linkHeaderIn
			_ = lh.decode(frame)
		}
	})
}

// FuzzLinkHeader checks the link header's direct path against
// encoding/json: a header decodes to what json.Unmarshal gives (or both
// fail), and decode ∘ encode is the identity.
func FuzzLinkHeader(f *testing.F) {
	f.Add([]byte(`{"g":"a,b"}`))
	f.Add([]byte(`{"g":"a\\"b"}`))
	f.Add([]byte(`{"g":"a","p":[]}`))
	f.Add([]byte(`{"g":"a","p":["12D3KooWASPCivYQMW4xxJc36bZ3PUAqzwaKsSnk365bseo25W86"]}`))
	f.Add([]byte(`{"g":"a","p":[],"g":"b"}`))
	f.Add([]byte(`{"g":"a","p":[1],"x":[2]}`))
	f.Add([]byte(`{"g":"é"}`))
	f.Add([]byte(`{"g":""}`))
	f.Add([]byte(`{"g":"x"} `))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want linkHeaderIn
		errGot, errWant := got.decode(data), json.Unmarshal(data, &want)
		if (errGot == nil) != (errWant == nil) {
			t.Fatalf("%q: decode error %v, json error %v", data, errGot, errWant)
		}
		if errGot != nil {
			return
		}
		if got.Group != want.Group || !bytes.Equal(got.Peers, want.Peers) {
			t.Fatalf("%q: decoded %+v, json %+v", data, got, want)
		}
		var ids []peer.ID
		if len(got.Peers) > 0 && json.Unmarshal(got.Peers, &ids) != nil {
			return
		}
		enc, err := linkHeader{Group: got.Group, Peers: ids}.encode()
		if err != nil {
			t.Fatal(err)
		}
		var again linkHeaderIn
		var idsAgain []peer.ID
		if err := again.decode(enc); err != nil || again.Group != got.Group {
			t.Fatalf("%q: encoded as %q, decoded as %+v, %v", data, enc, again, err)
		}
		if len(again.Peers) > 0 {
			if err := json.Unmarshal(again.Peers, &idsAgain); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(ids, idsAgain) {
			t.Fatalf("%q: peers %v, after encode and decode %v", data, ids, idsAgain)
		}
	})
}
