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
			_ = json.Unmarshal(frame, &lh)
		}
	})
}
