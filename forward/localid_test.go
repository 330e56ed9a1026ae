package forward

import (
	"encoding/json"
	"testing"

	"cheops/scope"
)

// answerIDCases are create answers, well formed or not.
var answerIDCases = []string{
	`{"n": 5, "id": "3f2a"}`,
	"{\n  \"n\": 5,\n  \"id\": \"3f2a\"\n}",
	`{"id": 12}`,
	`{"id": 1.5e3, "x": [1, {"id": "no"}]}`,
	`{"x": {"id": "nested"}, "id": "top"}`,
	`{"x": {"id": "nested"}}`,
	`{"id": "first", "id": "last"}`,
	`{"id": "first", "id": {"a": 1}}`,
	`{"id": ""}`,
	`{"id": null}`,
	`{"id": true}`,
	`{"id": ["a"]}`,
	`{"id": {"a": "b"}}`,
	`{"id": "a\"b\u00e9"}`,
	`{"id": "x"} trailing`,
	`{"id": "x"`,
	`{"id": "x",}`,
	`{"id" "x"}`,
	`["id", "x"]`,
	`"id"`,
	``,
	`{}`,
	`{"a": [[[]]], "id": "deep"}`,
	`{"a": [[[]], "id": "broken"}`,
	`{"ID": "upper"}`,
	`{"Id": "mixed", "id": "exact"}`,
	`{"id": "exact", "iD": "mixed"}`,
	`{"\u0069d": "escaped"}`,
	`{"\u0049D": "escaped upper"}`,
	`{"id": -0.5}`,
	`{"id": 007}`,
	`null`,
	`{"id": "x"}{"id": "y"}`,
	`{"id": "x"}]`,
}

// TestAnswerIDReadsWhatADecodedMapGives: answerID agrees with localID
// (the whole answer decoded into a map) on every case.
func TestAnswerIDReadsWhatADecodedMapGives(t *testing.T) {
	for _, field := range []string{"id", "n", "x", "ID"} {
		for _, body := range answerIDCases {
			want, wantOK := localID([]byte(body), field)
			got, ok := answerID([]byte(body), field)
			if got != want || ok != wantOK {
				t.Errorf("field %q of %s: %q %v, a decoded map gives %q %v", field, body, got, ok, want, wantOK)
			}
		}
	}
}

// FuzzAnswerID checks answerID against localID on any body.
func FuzzAnswerID(f *testing.F) {
	for _, body := range answerIDCases {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		want, wantOK := localID(body, "id")
		got, ok := answerID(body, "id")
		if got != want || ok != wantOK {
			t.Errorf("%q: %q %v, a decoded map gives %q %v", body, got, ok, want, wantOK)
		}
	})
}

// BenchmarkLocalID reads the id of json-server's answer to a create, as
// a decoded map (localID) and as answerID (a struct with the id field).
func BenchmarkLocalID(b *testing.B) {
	body, _ := json.MarshalIndent(map[string]any{"n": 417, "title": "a post", "id": "3f2a"}, "", "  ")
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			localID(body, "id")
		}
	})
	b.Run("struct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			answerID(body, "id")
		}
	})
}

// TestOwnScope: the scope Call sends to this site's application, the
// site alone, is printed as ownScope gives it.
func TestOwnScope(t *testing.T) {
	for _, site := range []string{"paris", "rome", "site-2", "a_b"} {
		s := &scope.Scope{Bindings: []scope.Binding{{Expr: scope.Site{Name: site}}}}
		if got := ownScope(site); got != s.String() {
			t.Errorf("ownScope(%q) = %q, the scope prints %q", site, got, s.String())
		}
	}
}
