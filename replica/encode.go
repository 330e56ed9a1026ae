package replica

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"cheops/catalog"
)

// Journal entries are written twice per execution (begun, then done), each
// time with the whole operation. encoding/json spent about 30 µs of an
// owed create's CPU on them (reflection over entry and catalog.Operation,
// the outcomes map sorted through reflect, the garbage of both), more
// than the pebble write. appendEntry writes the same bytes directly:
// TestEntryEncodingIsJSONMarshal checks it against json.Marshal, so that
// an entry reads back (json.Unmarshal) as before, whichever wrote it.

// encodeEntry returns the JSON of an entry, as json.Marshal(e) would.
func encodeEntry(e *entry) ([]byte, error) {
	b, err := appendEntry(make([]byte, 0, 256+len(e.Op.Path)+len(e.Op.Body)*4/3), e)
	if err != nil {
		return nil, fmt.Errorf("replica: encode entry %s: %w", e.Op.ID, err)
	}
	return b, nil
}

func appendEntry(b []byte, e *entry) ([]byte, error) {
	b = append(b, `{"op":`...)
	b = appendOp(b, &e.Op)
	b = append(b, `,"state":`...)
	b = appendString(b, e.State)
	if e.Status != 0 {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(e.Status), 10)
	}
	if e.Outcome != "" {
		b = append(b, `,"outcome":`...)
		b = appendString(b, e.Outcome)
	}
	if e.Failed != "" {
		b = append(b, `,"failed":`...)
		b = appendString(b, e.Failed)
	}
	if e.LocalID != "" {
		b = append(b, `,"local_id":`...)
		b = appendString(b, e.LocalID)
	}
	b = append(b, `,"started":`...)
	b, err := appendTime(b, e.Started)
	if err != nil {
		return nil, err
	}
	if e.AttachBase != nil {
		b = append(b, `,"attach_base":`...)
		b = appendTimestamp(b, *e.AttachBase)
	}
	return append(b, '}'), nil
}

// appendOp writes an operation as json.Marshal does (its fields in
// declaration order, omitempty honoured, map keys sorted).
func appendOp(b []byte, o *catalog.Operation) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, o.ID)
	b = append(b, `,"resource":`...)
	b = appendString(b, o.Resource)
	b = append(b, `,"origin":`...)
	b = appendString(b, o.Origin)
	b = append(b, `,"at":`...)
	b = appendTimestamp(b, o.At)
	b = append(b, `,"method":`...)
	b = appendString(b, o.Method)
	if o.Policy != "" {
		b = append(b, `,"policy":`...)
		b = appendString(b, o.Policy)
	}
	b = append(b, `,"path":`...)
	b = appendString(b, o.Path)
	if len(o.Body) > 0 {
		b = append(b, `,"body":"`...)
		b = base64.StdEncoding.AppendEncode(b, o.Body)
		b = append(b, '"')
	}
	b = append(b, `,"targets":`...)
	if o.Targets == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, t := range o.Targets {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, t)
		}
		b = append(b, ']')
	}
	b = append(b, `,"outcomes":`...)
	if o.Outcomes == nil {
		b = append(b, "null"...)
	} else {
		var buf [8]string
		keys := buf[:0]
		for k := range o.Outcomes {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, o.Outcomes[k])
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

func appendTimestamp(b []byte, t catalog.Timestamp) []byte {
	b = append(b, `{"wall":`...)
	b = strconv.AppendInt(b, t.Wall, 10)
	b = append(b, `,"logical":`...)
	b = strconv.AppendUint(b, uint64(t.Logical), 10)
	return append(b, '}')
}

// appendTime writes a time as time.Time's MarshalJSON does.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("time %v: year outside of range [0,9999]", t)
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

// appendString writes s as a JSON string as json.Marshal does: printable
// ASCII but the characters it escapes is copied; any other string (rare
// here: ids, methods, paths, outcomes) goes through json.Marshal.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
