package crdt

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"
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
			var lh linkHeader
			_ = lh.decode(frame)
		}
	})
}

// FuzzLinkHeader checks the link header's direct path against
// encoding/json: a header decodes to what json.Unmarshal gives (or both
// fail), and encode ∘ decode is the identity.
func FuzzLinkHeader(f *testing.F) {
	f.Add([]byte(`{"g":"a,b"}`))
	f.Add([]byte(`{"g":"a\"b"}`))
	f.Add([]byte(`{"g":"a","p":[]}`))
	f.Add([]byte(`{"g":"é"}`))
	f.Add([]byte(`{"g":""}`))
	f.Add([]byte(`{"g":"x"} `))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want linkHeader
		errGot, errWant := got.decode(data), json.Unmarshal(data, &want)
		if (errGot == nil) != (errWant == nil) {
			t.Fatalf("%q: decode error %v, json error %v", data, errGot, errWant)
		}
		if errGot != nil {
			return
		}
		if got.Group != want.Group || len(got.Peers) != len(want.Peers) {
			t.Fatalf("%q: decoded %+v, json %+v", data, got, want)
		}
		enc, err := got.encode()
		if err != nil {
			t.Fatal(err)
		}
		var again linkHeader
		if err := again.decode(enc); err != nil || again.Group != got.Group || len(again.Peers) != len(got.Peers) {
			t.Fatalf("%q: encode then decode gave %+v, %v", data, again, err)
		}
	})
}
