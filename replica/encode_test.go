package replica

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"cheops/catalog"
)

// TestEntryEncodingIsJSONMarshal checks that the hand-written encoding of
// a journal entry is byte for byte json.Marshal's, for entries as the
// executor writes them and for random ones (strings with characters JSON
// escapes, non-ASCII, empty and nil fields), and that it reads back as
// the entry.
func TestEntryEncodingIsJSONMarshal(t *testing.T) {
	base := &catalog.Timestamp{Wall: 1733234567890, Logical: 3}
	cases := []*entry{
		{},
		{Op: catalog.Operation{ID: "01JE0000000000000000000000", Resource: "01JE0000000000000000000001", Origin: "paris",
			At: catalog.Timestamp{Wall: 1733234567890}, Method: "POST", Path: "/posts#application/json", Body: []byte(`{"n": 1}`),
			Targets: []string{"paris", "rome"}, Outcomes: map[string]string{"rome": "pending", "paris": "201"}},
			State: stateBegun, Started: time.Now().UTC()},
		{Op: catalog.Operation{ID: "x", Method: "PATCH", Policy: catalog.PolicyCommute, Path: "/posts/1", Targets: []string{}, Outcomes: map[string]string{}},
			State: stateDone, Status: 404, Failed: `404: {"error": "<not> & found"}`, Started: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)), AttachBase: base},
		{Op: catalog.Operation{ID: "é\u2028\n\t\"\\"}, State: stateDone, Status: 201, Outcome: "201", LocalID: "ü", Started: time.Unix(0, 0).UTC()},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		cases = append(cases, randomEntry(rng))
	}
	for i, e := range cases {
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := encodeEntry(e)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d:\n got %s\nwant %s", i, got, want)
		}
		var back entry
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		var fromWant entry
		_ = json.Unmarshal(want, &fromWant)
		if !reflect.DeepEqual(back, fromWant) {
			t.Fatalf("case %d: reads back as %+v, want %+v", i, back, fromWant)
		}
	}
	if _, err := encodeEntry(&entry{Started: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}); err == nil {
		t.Fatal("a time json.Marshal refuses was encoded")
	}
}

func randomEntry(rng *rand.Rand) *entry {
	alphabet := []rune("abcXYZ019/#-_ .:<>&\"\\\n\x01\u00e9\u2028\u4e16\U0001F600")
	str := func() string {
		n := rng.IntN(12)
		if rng.IntN(3) == 0 {
			n = 0
		}
		r := make([]rune, n)
		for i := range r {
			if rng.IntN(4) == 0 {
				r[i] = alphabet[rng.IntN(len(alphabet))]
			} else {
				r[i] = rune('a' + rng.IntN(26))
			}
		}
		s := string(r)
		if rng.IntN(20) == 0 {
			s += "\xff" // invalid UTF-8
		}
		return s
	}
	strs := func() []string {
		switch rng.IntN(3) {
		case 0:
			return nil
		}
		out := make([]string, rng.IntN(4))
		for i := range out {
			out[i] = str()
		}
		return out
	}
	e := &entry{
		Op: catalog.Operation{ID: str(), Resource: str(), Origin: str(), At: catalog.Timestamp{Wall: rng.Int64() - rng.Int64(), Logical: rng.Uint32()},
			Method: str(), Policy: str(), Path: str(), Targets: strs()},
		State: str(), Status: rng.IntN(600) - 50, Outcome: str(), Failed: str(), LocalID: str(),
		Started: time.Unix(rng.Int64N(1<<35), rng.Int64N(1e9)).In(time.FixedZone("", (rng.IntN(48)-24)*1800)),
	}
	if rng.IntN(2) == 0 {
		e.Op.Body = []byte(str())
	}
	if rng.IntN(2) == 0 {
		e.Op.Outcomes = map[string]string{}
		for range rng.IntN(5) {
			e.Op.Outcomes[str()] = str()
		}
	}
	if rng.IntN(3) == 0 {
		e.AttachBase = &catalog.Timestamp{Wall: rng.Int64(), Logical: rng.Uint32()}
	}
	return e
}

// BenchmarkEntryEncoding compares the hand-written encoding of a done
// entry of an owed create with json.Marshal's.
func BenchmarkEntryEncoding(b *testing.B) {
	e := &entry{Op: catalog.Operation{ID: "01JE0000000000000000000000", Resource: "01JE0000000000000000000001", Origin: "paris",
		At: catalog.Timestamp{Wall: 1733234567890}, Method: "POST", Path: "/posts#application/json", Body: []byte(`{"n": 1}`),
		Targets: []string{"paris", "rome"}, Outcomes: map[string]string{"rome": "pending", "paris": "201"}},
		State: stateDone, Status: 201, Outcome: "201", LocalID: "a1b2", Started: time.Now().UTC()}
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeEntry(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
