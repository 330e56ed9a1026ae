package scope

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func site(n string) Expr { return Site{Name: n} }

func TestParse(t *testing.T) {
	tests := []struct {
		in        string
		want      *Scope
		canonical string
	}{
		// Every example of the documentation (README.md, scope/doc.go).
		{"{posts: paris}", bind("posts", site("paris")), "{posts: paris}"},
		{"{compute: paris, image: berlin}", &Scope{Bindings: []Binding{{"compute", site("paris")}, {"image", site("berlin")}}}, "{compute: paris, image: berlin}"},
		{"{posts: paris & berlin}", bind("posts", All{[]Expr{site("paris"), site("berlin")}}), "{posts: paris & berlin}"},
		{"{posts: paris ; berlin}", bind("posts", Else{[]Expr{site("paris"), site("berlin")}}), "{posts: paris ; berlin}"},
		{"{posts: around(paris, 10ms)}", bind("posts", Around{"paris", 10 * time.Millisecond}), "{posts: around(paris, 10ms)}"},
		{"{posts: (paris | rome) & berlin}", bind("posts", All{[]Expr{Any{[]Expr{site("paris"), site("rome")}}, site("berlin")}}), "{posts: (paris | rome) & berlin}"},
		{"paris & berlin", bare(All{[]Expr{site("paris"), site("berlin")}}), "paris & berlin"},
		// Every operator.
		{"a | b", bare(Any{[]Expr{site("a"), site("b")}}), "a | b"},
		{"*", bare(Every{}), "*"},
		{"{s: *}", bind("s", Every{}), "{s: *}"},
		{"around(x, 1.5s)", bare(Around{"x", 1500 * time.Millisecond}), "around(x, 1.5s)"},
		{"around(x, .5s)", bare(Around{"x", 500 * time.Millisecond}), "around(x, 500ms)"},
		{"around(x,1h2m)", bare(Around{"x", time.Hour + 2*time.Minute}), "around(x, 1h2m0s)"},
		{"around(x, 250us) | around(y, 3µs)", bare(Any{[]Expr{Around{"x", 250 * time.Microsecond}, Around{"y", 3 * time.Microsecond}}}), "around(x, 250µs) | around(y, 3µs)"},
		// Precedence: & over | over ;.
		{"a & b | c ; d", bare(Else{[]Expr{Any{[]Expr{All{[]Expr{site("a"), site("b")}}, site("c")}}, site("d")}}), "a & b | c ; d"},
		{"a ; b | c & d", bare(Else{[]Expr{site("a"), Any{[]Expr{site("b"), All{[]Expr{site("c"), site("d")}}}}}}), "a ; b | c & d"},
		{"(a ; b) & c", bare(All{[]Expr{Else{[]Expr{site("a"), site("b")}}, site("c")}}), "(a ; b) & c"},
		{"a & (b | c)", bare(All{[]Expr{site("a"), Any{[]Expr{site("b"), site("c")}}}}), "a & (b | c)"},
		// Chains flatten; redundant parentheses vanish.
		{"a & b & c", bare(All{[]Expr{site("a"), site("b"), site("c")}}), "a & b & c"},
		{"(a & b) & c", bare(All{[]Expr{site("a"), site("b"), site("c")}}), "a & b & c"},
		{"((a))", bare(site("a")), "a"},
		{"a | (b | c)", bare(Any{[]Expr{site("a"), site("b"), site("c")}}), "a | b | c"},
		{"(a & b) | c", bare(Any{[]Expr{All{[]Expr{site("a"), site("b")}}, site("c")}}), "a & b | c"},
		// White space is free; names take digits, '_', '.', '-'.
		{" {\n\tposts :paris&berlin ,images:  eu-west.1 } ", &Scope{Bindings: []Binding{{"posts", All{[]Expr{site("paris"), site("berlin")}}}, {"images", site("eu-west.1")}}}, "{posts: paris & berlin, images: eu-west.1}"},
		{"around", bare(site("around")), "around"},
		{"{around: around(around, 1m)}", bind("around", Around{"around", time.Minute}), "{around: around(around, 1m0s)}"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Parse(%q) = %#v, want %#v", tc.in, got, tc.want)
			}
			if s := got.String(); s != tc.canonical {
				t.Fatalf("String() = %q, want %q", s, tc.canonical)
			}
			again, err := Parse(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("round trip of %q: %#v, %v", got.String(), again, err)
			}
		})
	}
}

func bind(svc string, e Expr) *Scope { return &Scope{Bindings: []Binding{{svc, e}}} }
func bare(e Expr) *Scope             { return &Scope{Bindings: []Binding{{"", e}}} }

func TestParseErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "scope: column 1: expected '{' or a site expression, found end of input"},
		{"   ", "scope: column 4: expected '{' or a site expression, found end of input"},
		{"{posts: &berlin}", "scope: column 9: expected site name, found '&'"},
		{"{posts: paris &}", "scope: column 16: expected site name, found '}'"},
		{"{posts: paris", "scope: column 14: expected '&', '|', ';', ',' or '}', found end of input"},
		{"{posts: paris rome}", "scope: column 15: expected '&', '|', ';', ',' or '}', found 'rome'"},
		{"{posts: paris; }", "scope: column 16: expected site name, found '}'"},
		{"{posts: paris, images}", "scope: column 22: expected ':', found '}'"},
		{"{posts: }", "scope: column 9: expected site name, found '}'"},
		{"{posts:: paris}", "scope: column 8: expected site name, found ':'"},
		{"{9posts: paris}", "scope: column 2: expected service name, found '9posts'"},
		{"{posts: paris: rome}", "scope: column 14: expected '&', '|', ';', ',' or '}', found ':'"},
		{"{posts: paris, posts: rome, posts: oslo}", "scope: column 16: service 'posts' is bound twice"},
		{"{", "scope: column 2: expected service name, found end of input"},
		{"}", "scope: column 1: expected site name, found '}'"},
		{"paris ;", "scope: column 8: expected site name, found end of input"},
		{"paris & * &", "scope: column 12: expected site name, found end of input"},
		{"* *", "scope: column 3: expected '&', '|', ';' or end of input, found '*'"},
		{"paris, rome", "scope: column 6: expected '&', '|', ';' or end of input, found ','"},
		{"around(paris, -5ms)", "scope: column 15: expected duration such as 10ms, found '-'"},
		{"around(paris, 10 ms)", "scope: column 15: expected positive duration such as 10ms, found '10'"},
		{"around(paris 10ms)", "scope: column 14: expected ',', found '10ms'"},
		{"around paris", "scope: column 8: expected '&', '|', ';' or end of input, found 'paris'"},
		{"around(paris, 10ms) & around(", "scope: column 30: expected site name, found end of input"},
		{"around(paris, 10ms, rome)", "scope: column 19: expected ')', found ','"},
		{"around(paris, 99999999999h)", "scope: column 15: expected positive duration such as 10ms, found '99999999999h'"},
		{"(paris | rome", "scope: column 14: expected '&', '|', ';' or ')', found end of input"},
		{"(paris rome)", "scope: column 8: expected '&', '|', ';' or ')', found 'rome'"},
		{"paris\tberlin", "scope: column 7: expected '&', '|', ';' or end of input, found 'berlin'"},
		{"{posts: paris,\n images: &}", "scope: column 25: expected site name, found '&'"},
		{"\x00", "scope: column 1: expected site name, found '\\x00'"},
		{"日本 & paris", "scope: column 1: expected site name, found '日'"},
		{"paris & 日本", "scope: column 9: expected site name, found '日'"},
		{"{posts paris}", "scope: column 8: expected ':', found 'paris'"},
		{"{: paris}", "scope: column 2: expected service name, found ':'"},
		{"{}", "scope: column 2: expected service name, found '}'"},
		{"{posts: paris,}", "scope: column 15: expected service name, found '}'"},
		{"{posts: paris} x", "scope: column 16: expected end of input, found 'x'"},
		{"{posts: paris, posts: rome}", "scope: column 16: service 'posts' is bound twice"},
		{"paris berlin", "scope: column 7: expected '&', '|', ';' or end of input, found 'berlin'"},
		{"paris &", "scope: column 8: expected site name, found end of input"},
		{"| paris", "scope: column 1: expected site name, found '|'"},
		{"paris || rome", "scope: column 8: expected site name, found '|'"},
		{"(paris", "scope: column 7: expected '&', '|', ';' or ')', found end of input"},
		{"paris)", "scope: column 6: expected '&', '|', ';' or end of input, found ')'"},
		{"()", "scope: column 2: expected site name, found ')'"},
		{"around(paris)", "scope: column 13: expected ',', found ')'"},
		{"around(paris, )", "scope: column 15: expected duration such as 10ms, found ')'"},
		{"around(paris, 10)", "scope: column 15: expected positive duration such as 10ms, found '10'"},
		{"around(paris, 10parsecs)", "scope: column 15: expected positive duration such as 10ms, found '10parsecs'"},
		{"around(paris, 0s)", "scope: column 15: expected positive duration such as 10ms, found '0s'"},
		{"around(10ms, paris)", "scope: column 8: expected site name, found '10ms'"},
		{"around(paris, 10ms", "scope: column 19: expected ')', found end of input"},
		{"around(*, 10ms)", "scope: column 8: expected site name, found '*'"},
		{"9lives", "scope: column 1: expected site name, found '9lives'"},
		{"_paris", "scope: column 1: expected site name, found '_'"},
		{".5", "scope: column 1: expected site name, found '.5'"},
		{"paris & .", "scope: column 9: expected site name, found '.'"},
		{"around(x, .s)", "scope: column 11: expected duration such as 10ms, found '.'"},
		{"par#is", "scope: column 4: expected '&', '|', ';' or end of input, found '#'"},
		{"{posts: paris & bérlin}", "scope: column 18: expected '&', '|', ';', ',' or '}', found 'é'"},
		{"{pöst: paris}", "scope: column 3: expected ':', found 'ö'"},
		{"{pos ts: paris}", "scope: column 6: expected ':', found 'ts'"},
		{"{posts: paris}}", "scope: column 15: expected end of input, found '}'"},
		{"{posts: {paris}}", "scope: column 9: expected site name, found '{'"},
		{"paris\xff", "scope: column 6: invalid UTF-8"},
		{strings.Repeat("(", MaxDepth+1) + "a" + strings.Repeat(")", MaxDepth+1), "scope: column 65: parentheses nested deeper than 64"},
		{strings.Repeat("a&", MaxLength/2+1), "scope: column 1: scope of 65538 bytes is longer than the limit of 65536"},
		{manyBindings(MaxBindings + 1), "scope: column 9132: more than 1024 services"},
	}
	for _, tc := range tests {
		t.Run(tc.in[:min(len(tc.in), 40)], func(t *testing.T) {
			s, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error %q", tc.in, s, tc.want)
			}
			if err.Error() != tc.want {
				t.Fatalf("Parse(%.60q) error\n got %q\nwant %q", tc.in, err.Error(), tc.want)
			}
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v does not wrap ErrSyntax", err)
			}
		})
	}
}

// manyBindings is a scope binding n services: {s0: a, s1: a, ...}.
func manyBindings(n int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "s%d: a", i)
	}
	b.WriteString("}")
	return b.String()
}

func TestParseLimitsAreInclusive(t *testing.T) {
	if _, err := Parse(manyBindings(MaxBindings)); err != nil {
		t.Fatalf("%d bindings: %v", MaxBindings, err)
	}
	long := strings.Repeat("a&", MaxLength/2-1) + "ab"
	if len(long) != MaxLength {
		t.Fatalf("test input is %d bytes", len(long))
	}
	if _, err := Parse(long); err != nil {
		t.Fatalf("%d bytes: %v", MaxLength, err)
	}
}

func TestParseDepthLimitIsInclusive(t *testing.T) {
	in := strings.Repeat("(", MaxDepth) + "a" + strings.Repeat(")", MaxDepth)
	if _, err := Parse(in); err != nil {
		t.Fatalf("nesting of exactly %d: %v", MaxDepth, err)
	}
}

func TestForAndServices(t *testing.T) {
	s, err := Parse("{a: paris, b: berlin}")
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := s.For("b"); !ok || Format(e) != "berlin" {
		t.Fatalf("For(b) = %v, %v", e, ok)
	}
	if _, ok := s.For("c"); ok {
		t.Fatal("For(c) found a binding in a scope without one")
	}
	bareScope, _ := Parse("rome")
	if e, ok := bareScope.For("anything"); !ok || Format(e) != "rome" {
		t.Fatalf("bare For = %v, %v", e, ok)
	}
	if got := s.Services(); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("Services = %v", got)
	}
	e, _ := ParseExpr("(a | around(b, 1ms)) & a ; *")
	if got := Sites(e); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("Sites = %v", got)
	}
	if _, err := ParseExpr("{a: b}"); err == nil {
		t.Fatal("ParseExpr accepted a braced scope")
	}
}
