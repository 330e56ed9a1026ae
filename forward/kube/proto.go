package kube

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"strings"
)

// protoMagic starts every Kubernetes protobuf body: a runtime.Unknown
// envelope (typeMeta = 1, raw = 2) whose raw object has its ObjectMeta in
// field 1, and ObjectMeta has the name in field 1.
var protoMagic = []byte("k8s\x00")

// protoName reads metadata.name from a Kubernetes protobuf body.
func protoName(body []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(body, protoMagic)
	if !ok {
		return "", false
	}
	raw, ok := protoBytes(rest, 2)
	if !ok {
		return "", false
	}
	meta, ok := protoBytes(raw, 1)
	if !ok {
		return "", false
	}
	name, ok := protoBytes(meta, 1)
	return string(name), ok && len(name) > 0
}

// protoBytes finds the first length-delimited field num of a protobuf
// message; enough of the wire format to walk Kubernetes envelopes.
func protoBytes(b []byte, num uint64) ([]byte, bool) {
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, false
		}
		b = b[n:]
		switch key & 7 {
		case 0: // varint
			_, n := binary.Uvarint(b)
			if n <= 0 {
				return nil, false
			}
			b = b[n:]
		case 1: // 64-bit
			if len(b) < 8 {
				return nil, false
			}
			b = b[8:]
		case 2: // length-delimited
			l, n := binary.Uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return nil, false
			}
			if key>>3 == num {
				return b[n : n+int(l)], true
			}
			b = b[n+int(l):]
		case 5: // 32-bit
			if len(b) < 4 {
				return nil, false
			}
			b = b[4:]
		default:
			return nil, false
		}
	}
	return nil, false
}

// Outgoing asks the API server for JSON only: kubectl accepts JSON as
// well as protobuf, and JSON answers can be merged across clusters and
// read by the catalog. A request body stays as the client sent it.
func (*Routes) Outgoing(h http.Header) {
	accept := h.Values("Accept")
	if len(accept) == 0 {
		return
	}
	var keep []string
	for _, v := range accept {
		for _, part := range strings.Split(v, ",") {
			if p := strings.TrimSpace(part); p != "" && !strings.Contains(p, "protobuf") {
				keep = append(keep, p)
			}
		}
	}
	if len(keep) == 0 {
		keep = []string{"application/json"}
	}
	h.Set("Accept", strings.Join(keep, ","))
}
