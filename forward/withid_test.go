package forward

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// sameJSON reports whether a and b are the same JSON value, or the same
// bytes when either is not JSON.
func sameJSON(a, b []byte) bool {
	decode := func(b []byte) (any, bool) {
		var v any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if dec.Decode(&v) != nil || dec.More() {
			return nil, false
		}
		return v, true
	}
	va, okA := decode(a)
	vb, okB := decode(b)
	if !okA || !okB {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(va, vb)
}

var withIDSeeds = []string{
	`{"id":1,"title":"x"}`,
	`{"title":"x"}`,
	`{}`,
	` { } `,
	"{\n  \"title\": \"x\",\n  \"id\": 12\n}\n",
	`{"a":{"id":2},"id":"7","b":[{"id":3}]}`,
	`{"id":null}`,
	`{"id":{"nested":["}",{"x":"]"}]},"t":1}`,
	`{"i\u0064":3,"t":1}`,
	`{"id":1,"id":2}`,
	`{"id":"a\"b"}`,
	`{"t":"quote \" and \\ backslash","n":-1.5e3,"ok":true}`,
	`[1,2]`,
	`"str"`,
	`12`,
	`not json`,
	``,
	`{"id":1} trailing`,
}

// TestWithIDSplices: the global id replaces (or joins) the id field of a
// JSON object, the same object as decoding and marshalling gave, and
// the rest of the body is kept as the application wrote it.
func TestWithIDSplices(t *testing.T) {
	const id = "01JABCDEFGHJKMNPQRSTVWXYZ0"
	for _, body := range withIDSeeds {
		got := withID([]byte(body), "id", id)
		if want := withIDDecoded([]byte(body), "id", id); !sameJSON(got, want) {
			t.Errorf("withID(%q) = %s, want the object %s", body, got, want)
		}
	}
	pretty := "{\n  \"title\": \"x\",\n  \"id\": 12\n}\n"
	if got, want := string(withID([]byte(pretty), "id", id)), "{\n  \"title\": \"x\",\n  \"id\": \""+id+"\"\n}\n"; got != want {
		t.Errorf("withID kept %q, want %q", got, want)
	}
	if got, want := string(withID([]byte(`{"t":1}`), "id", id)), `{"id":"`+id+`","t":1}`; got != want {
		t.Errorf("withID added %q, want %q", got, want)
	}
}

func FuzzWithID(f *testing.F) {
	for _, s := range withIDSeeds {
		f.Add(s, "id")
	}
	f.Fuzz(func(t *testing.T, body, field string) {
		const id = "01JABCDEFGHJKMNPQRSTVWXYZ0"
		got := withID([]byte(body), field, id)
		if want := withIDDecoded([]byte(body), field, id); !sameJSON(got, want) {
			t.Errorf("withID(%q, %q) = %s, want the object %s", body, field, got, want)
		}
	})
}

// BenchmarkWithID: a create's answer given the global id, spliced
// (withID) against decoded and marshalled (the earlier way).
func BenchmarkWithID(b *testing.B) {
	body := []byte(`{"title":"a new item","body":"created by the benchmark","n":42,"id":1234}`)
	const id = "01JABCDEFGHJKMNPQRSTVWXYZ0"
	b.Run("splice", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			withID(body, "id", id)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			withIDDecoded(body, "id", id)
		}
	})
}
