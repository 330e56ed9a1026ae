package scope

import (
	"errors"
	"hash/fnv"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzParse checks that Parse never panics; that an error is a
// *SyntaxError whose column lies within the input; that whatever Parse
// accepts prints to a canonical form that parses back to the same scope and
// prints the same again; and that planning it, against a view made of its
// own sites, keeps the planner's invariants.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"{posts: paris}", "{compute: paris, image: berlin}", "{posts: paris & berlin}",
		"{posts: paris ; berlin}", "{posts: around(paris, 10ms)}", "{posts: (paris | rome) & berlin}",
		"paris & berlin", "a & b | c ; d", "*", "((a))", "around(x, 1.5s)", "{a: b,}", "(((", "a\xff",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, src string) {
		s, err := Parse(src)
		if err != nil {
			var se *SyntaxError
			if s != nil || !errors.As(err, &se) || !errors.Is(err, ErrSyntax) {
				t.Fatalf("Parse(%q) = %v, %v", src, s, err)
			}
			if n := utf8.RuneCountInString(src); se.Column < 1 || se.Column > n+1 {
				t.Fatalf("Parse(%q): column %d outside 1..%d", src, se.Column, n+1)
			}
			if !strings.HasPrefix(err.Error(), "scope: column ") {
				t.Fatalf("Parse(%q): message %q", src, err)
			}
			return
		}
		text := s.String()
		again, err := Parse(text)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", text, src, err)
		}
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("round trip of %q through %q changed the scope", src, text)
		}
		if again.String() != text {
			t.Fatalf("canonical form is not stable: %q then %q", text, again.String())
		}
		v := viewOf(s)
		for _, b := range s.Bindings {
			p, err := s.Plan(b.Service, v)
			checkPlan(t, text, p, err)
		}
	})
}

// viewOf makes a view holding every site the scope names and one more,
// with states and RTTs drawn from a hash of the names: deterministic, and
// varied enough to reach every branch of the planner.
func viewOf(s *Scope) View {
	h := func(parts ...string) uint32 {
		f := fnv.New32a()
		for _, p := range parts {
			f.Write([]byte(p))
			f.Write([]byte{0})
		}
		return f.Sum32()
	}
	names := []string{"extra"}
	for _, b := range s.Bindings {
		names = append(names, Sites(b.Expr)...)
	}
	v := View{Local: names[len(names)-1], Sites: map[string]SiteInfo{}}
	for _, n := range names {
		info := SiteInfo{Name: n, State: State(h(n) % 4), RTT: map[string]time.Duration{}}
		for _, m := range names {
			if x := h(n, m); x%3 != 0 {
				info.RTT[m] = time.Duration(x%50) * time.Millisecond
			}
		}
		v.Sites[n] = info
	}
	return v
}

// checkPlan verifies what every plan promises.
func checkPlan(t *testing.T, scope string, p *Plan, err error) {
	t.Helper()
	switch {
	case err == nil:
	case errors.Is(err, ErrUnreachable):
		if p == nil || p.Chosen != -1 || len(p.Targets) != 0 {
			t.Fatalf("%s: unreachable plan %+v", scope, p)
		}
		return
	default:
		t.Fatalf("%s: unexpected error %v", scope, err)
	}
	if p.Chosen < 0 || p.Chosen >= len(p.Alternatives) || !p.Alternatives[p.Chosen].Runnable {
		t.Fatalf("%s: chosen %d of %+v", scope, p.Chosen, p.Alternatives)
	}
	seen := map[string]bool{}
	reachable, standby := false, false
	for _, tg := range p.Targets {
		if seen[tg.Site] {
			t.Fatalf("%s: %s targeted twice: %+v", scope, tg.Site, p.Targets)
		}
		seen[tg.Site] = true
		if tg.Required && standby {
			t.Fatalf("%s: required target after a standby: %+v", scope, p.Targets)
		}
		standby = standby || !tg.Required
		reachable = reachable || tg.Required && tg.Reachable
	}
	if !reachable {
		t.Fatalf("%s: no reachable required target: %+v", scope, p.Targets)
	}
	for _, x := range p.Excluded {
		if seen[x.Site] || x.Reason == "" {
			t.Fatalf("%s: exclusion %+v of a target or without reason", scope, x)
		}
		seen[x.Site] = true
	}
}
