package scope

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// europe is a membership view from paris: berlin 10 ms away, rome 25 ms,
// madrid 40 ms and down, oslo up with no RTT measured from paris.
func europe() View {
	ms := time.Millisecond
	return View{Local: "paris", Sites: map[string]SiteInfo{
		"paris":  {Name: "paris", State: Up, RTT: map[string]time.Duration{"berlin": 10 * ms, "rome": 25 * ms, "madrid": 40 * ms}},
		"berlin": {Name: "berlin", State: Up, RTT: map[string]time.Duration{"rome": 12 * ms, "oslo": 8 * ms}},
		"rome":   {Name: "rome", State: Suspect},
		"madrid": {Name: "madrid", State: Down},
		"oslo":   {Name: "oslo", State: Up},
	}}
}

func TestPlan(t *testing.T) {
	tests := []struct {
		scope    string
		service  string
		required []string
		standby  []string
		pending  []string
		chosen   int
		excluded []string
	}{
		{scope: "{posts: paris}", service: "posts", required: []string{"paris"}},
		{scope: "paris", service: "anything", required: []string{"paris"}},
		{scope: "{compute: paris, image: berlin}", service: "image", required: []string{"berlin"}},
		{scope: "{posts: paris & berlin}", service: "posts", required: []string{"paris", "berlin"}},
		// '&' with one site down: partial, the down one pending.
		{scope: "paris & madrid", required: []string{"paris", "madrid"}, pending: []string{"madrid"}},
		// ';' skips an alternative with a site down.
		{scope: "madrid ; berlin", required: []string{"berlin"}, chosen: 1, excluded: []string{"madrid"}},
		{scope: "paris & madrid ; berlin", required: []string{"berlin"}, chosen: 1, excluded: []string{"paris", "madrid"}},
		{scope: "berlin ; rome", required: []string{"berlin"}, excluded: []string{"rome"}},
		// '|' picks the nearest reachable, the others stand by.
		{scope: "rome | berlin", required: []string{"berlin"}, standby: []string{"rome"}},
		{scope: "madrid | rome", required: []string{"rome"}, excluded: []string{"madrid"}},
		{scope: "oslo | rome", required: []string{"rome"}, standby: []string{"oslo"}},
		{scope: "(rome | berlin) & paris", required: []string{"berlin", "paris"}, standby: []string{"rome"}},
		{scope: "rome & berlin | paris", required: []string{"paris"}, standby: []string{"rome", "berlin"}},
		// around(): within the bound of the center, nearest to it first.
		{scope: "around(paris, 15ms)", required: []string{"paris"}, standby: []string{"berlin"}, excluded: []string{"madrid", "oslo", "rome"}},
		{scope: "around(berlin, 9ms)", required: []string{"berlin"}, standby: []string{"oslo"}, excluded: []string{"paris", "madrid", "rome"}},
		{scope: "around(madrid, 50ms)", required: []string{"paris"}, excluded: []string{"berlin", "madrid", "oslo", "rome"}},
		// '*' is every known site, the local one first.
		{scope: "*", required: []string{"paris", "berlin", "madrid", "oslo", "rome"}, pending: []string{"madrid"}},
		// Nothing complete: the first runnable alternative, partially.
		{scope: "madrid & rome ; madrid & berlin", required: []string{"madrid", "rome"}, pending: []string{"madrid"}, excluded: []string{"berlin"}},
		// '|' with no complete term takes the nearest partial one.
		{scope: "madrid & rome | madrid & berlin", required: []string{"madrid", "berlin"}, pending: []string{"madrid"}, excluded: []string{"rome"}},
		// '|' prefers a complete term to a nearer partial one.
		{scope: "paris & madrid | rome", required: []string{"rome"}, excluded: []string{"paris", "madrid"}},
		// A site required anywhere is required, even if a choice made it a standby.
		{scope: "(rome | berlin) & rome", required: []string{"berlin", "rome"}},
		{scope: "(paris | berlin) & berlin", required: []string{"paris", "berlin"}},
		// Nested fallbacks.
		{scope: "(madrid ; rome) & berlin", required: []string{"rome", "berlin"}, excluded: []string{"madrid"}},
		{scope: "(rome ; madrid) & berlin", required: []string{"rome", "berlin"}, excluded: []string{"madrid"}},
		{scope: "madrid ; (madrid | oslo) & berlin", required: []string{"oslo", "berlin"}, chosen: 1, excluded: []string{"madrid"}},
		// An unresolved choice inside '&' leaves the rest partial.
		{scope: "around(madrid, 1ms) & berlin", required: []string{"berlin"}, excluded: []string{"paris", "madrid", "oslo", "rome"}},
		{scope: "around(madrid, 1ms) & berlin ; rome", required: []string{"rome"}, chosen: 1, excluded: []string{"berlin", "paris", "madrid", "oslo"}},
	}
	for _, tc := range tests {
		t.Run(tc.scope, func(t *testing.T) {
			s, err := Parse(tc.scope)
			if err != nil {
				t.Fatal(err)
			}
			p, err := s.Plan(tc.service, europe())
			if err != nil {
				t.Fatalf("Plan: %v", err)
			}
			var standby []string
			for _, tg := range p.Targets {
				if !tg.Required {
					standby = append(standby, tg.Site)
				}
			}
			check(t, "required", p.Required(), tc.required)
			check(t, "standby", standby, tc.standby)
			check(t, "pending", p.Pending(), tc.pending)
			var excluded []string
			for _, x := range p.Excluded {
				if x.Reason == "" {
					t.Errorf("exclusion of %s has no reason", x.Site)
				}
				excluded = append(excluded, x.Site)
			}
			check(t, "excluded", excluded, tc.excluded)
			if p.Chosen != tc.chosen {
				t.Errorf("chosen = %d, want %d (%+v)", p.Chosen, tc.chosen, p.Alternatives)
			}
		})
	}
}

func check(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func TestPlanTargetFields(t *testing.T) {
	s, _ := Parse("berlin & madrid")
	p, err := s.Plan("x", europe())
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{
		{Site: "berlin", Required: true, Reachable: true, RTT: 10 * time.Millisecond, Measured: true},
		{Site: "madrid", Required: true, Reachable: false, RTT: 40 * time.Millisecond, Measured: true},
	}
	if !reflect.DeepEqual(p.Targets, want) {
		t.Fatalf("targets = %+v", p.Targets)
	}
	if p.Alternatives[0].Complete || !p.Alternatives[0].Runnable || p.Alternatives[0].Reason != "madrid is unreachable" {
		t.Fatalf("alternative = %+v", p.Alternatives[0])
	}
}

// TestPlanTies: equally near terms of '|' go by name, unmeasured RTTs
// come last, and the local site is not reachable when membership says it
// is down.
func TestPlanTies(t *testing.T) {
	ms := time.Millisecond
	v := View{Local: "lyon", Sites: map[string]SiteInfo{
		"lyon":  {Name: "lyon", State: Down, RTT: map[string]time.Duration{"nice": 5 * ms, "brest": 5 * ms, "metz": 9 * ms}},
		"nice":  {Name: "nice", State: Up},
		"brest": {Name: "brest", State: Suspect},
		"metz":  {Name: "metz", State: Up},
		"pau":   {Name: "pau", State: Up},
		"caen":  {Name: "caen", State: Up},
	}}
	for _, tc := range []struct {
		scope string
		want  []string // required, then standbys
	}{
		{"nice | brest", []string{"brest", "nice"}},
		{"brest | nice", []string{"brest", "nice"}},
		{"pau | caen | metz", []string{"metz", "caen", "pau"}},
		{"lyon | metz", []string{"metz"}},
		{"(nice & metz) | (brest & metz)", []string{"brest", "metz", "nice"}},
		{"around(nice, 1s)", []string{"nice"}},
	} {
		s, err := Parse(tc.scope)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Plan("x", v)
		if err != nil {
			t.Fatalf("%s: %v", tc.scope, err)
		}
		var got []string
		for _, tg := range p.Targets {
			got = append(got, tg.Site)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: targets %v, want %v", tc.scope, got, tc.want)
		}
	}
}

// TestPlanReasons pins the text of every kind of exclusion.
func TestPlanReasons(t *testing.T) {
	for _, tc := range []struct {
		scope string
		want  []Exclusion
	}{
		{"madrid ; berlin", []Exclusion{{"madrid", "unreachable (down)"}}},
		{"madrid & rome ; berlin", []Exclusion{{"madrid", "unreachable (down)"}, {"rome", "alternative 1 (madrid & rome) cannot run fully: madrid is unreachable"}}},
		{"berlin ; rome", []Exclusion{{"rome", "alternative 2 (rome) not needed: alternative 1 was chosen"}}},
		{"paris & madrid | rome", []Exclusion{{"paris", "paris & madrid cannot run fully: madrid is unreachable"}, {"madrid", "unreachable (down)"}}},
		{"madrid & rome | madrid & berlin", []Exclusion{{"rome", "madrid & rome is farther than madrid & berlin"}}},
		{"around(berlin, 9ms)", []Exclusion{{"paris", "RTT 10ms from berlin is over 9ms"}, {"madrid", "no RTT measured between berlin and madrid"}, {"rome", "RTT 12ms from berlin is over 9ms"}}},
		{"around(paris, 50ms)", []Exclusion{{"madrid", "unreachable (down)"}, {"oslo", "no RTT measured between paris and oslo"}}},
		{"(madrid ; rome) & berlin", []Exclusion{{"madrid", "unreachable (down)"}}},
		{"(rome ; oslo) & berlin", []Exclusion{{"oslo", "oslo not needed: rome was chosen"}}},
		{"(madrid | around(madrid, 1ms)) & berlin ; rome", []Exclusion{{"berlin", "alternative 1 ((madrid | around(madrid, 1ms)) & berlin) cannot run fully: no term of madrid | around(madrid, 1ms) is reachable"}, {"madrid", "unreachable (down)"}, {"paris", "RTT 40ms from madrid is over 1ms"}, {"oslo", "no RTT measured between madrid and oslo"}}},
	} {
		s, err := Parse(tc.scope)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Plan("x", europe())
		if err != nil {
			t.Fatalf("%s: %v", tc.scope, err)
		}
		if !reflect.DeepEqual(p.Excluded, tc.want) {
			t.Errorf("%s: excluded\n got %q\nwant %q", tc.scope, p.Excluded, tc.want)
		}
	}
}

func TestPlanErrors(t *testing.T) {
	tests := []struct {
		scope, service string
		want           error
		text           string
	}{
		{"{posts: paris & tokyo}", "posts", ErrUnknownSite, `unknown site: "tokyo"`},
		{"around(tokyo, 5ms)", "posts", ErrUnknownSite, `unknown site: "tokyo"`},
		{"{posts: paris}", "images", ErrNoBinding, `scope does not place this service: "images" (scope {posts: paris} binds posts)`},
		{"{post: paris & berlin}", "posts", ErrNoBinding, `scope does not place this service: "posts" (scope {post: paris & berlin} binds post); did you mean "post"?`},
		{"{comments: berlin, image: paris}", "images", ErrNoBinding, `scope does not place this service: "images" (scope {comments: berlin, image: paris} binds comments, image); did you mean "image"?`},
		{"madrid", "posts", ErrUnreachable, "no site of the scope is reachable: madrid"},
		{"madrid | madrid", "posts", ErrUnreachable, "no site of the scope is reachable: madrid | madrid"},
		{"around(madrid, 1ms)", "posts", ErrUnreachable, "no site of the scope is reachable: around(madrid, 1ms)"},
	}
	for _, tc := range tests {
		t.Run(tc.scope, func(t *testing.T) {
			s, err := Parse(tc.scope)
			if err != nil {
				t.Fatal(err)
			}
			p, err := s.Plan(tc.service, europe())
			if !errors.Is(err, tc.want) {
				t.Fatalf("Plan error = %v, want %v", err, tc.want)
			}
			if err.Error() != tc.text {
				t.Fatalf("message %q, want %q", err.Error(), tc.text)
			}
			if errors.Is(err, ErrUnreachable) && (p == nil || p.Chosen != -1 || len(p.Alternatives) == 0) {
				t.Fatalf("unreachable plan should still explain itself: %+v", p)
			}
		})
	}
}

func TestPlanIsDeterministic(t *testing.T) {
	s, _ := Parse("{a: * ; rome | berlin, b: around(paris, 1s) & (oslo | rome)}")
	first, _ := s.Plan("b", europe())
	for range 50 {
		again, _ := s.Plan("b", europe())
		if !reflect.DeepEqual(first, again) {
			t.Fatalf("plans differ:\n%+v\n%+v", first, again)
		}
	}
}

func TestViewRTT(t *testing.T) {
	v := europe()
	for _, tc := range []struct {
		from, to string
		want     time.Duration
		ok       bool
	}{
		{"paris", "paris", 0, true},
		{"paris", "berlin", 10 * time.Millisecond, true},
		{"berlin", "paris", 10 * time.Millisecond, true},
		{"oslo", "berlin", 8 * time.Millisecond, true},
		{"oslo", "paris", 0, false},
	} {
		got, ok := v.RTT(tc.from, tc.to)
		if got != tc.want || ok != tc.ok {
			t.Errorf("RTT(%s, %s) = %v, %v", tc.from, tc.to, got, ok)
		}
	}
}

// tenServices is a 10-service scope touching every operator.
func tenServices() (string, View) {
	v := View{Local: "s0", Sites: map[string]SiteInfo{}}
	for i := range 12 {
		name := fmt.Sprintf("s%d", i)
		rtt := map[string]time.Duration{}
		for j := range 12 {
			rtt[fmt.Sprintf("s%d", j)] = time.Duration((i-j)*(i-j)+1) * time.Millisecond
		}
		st := Up
		if i%5 == 4 {
			st = Down
		}
		v.Sites[name] = SiteInfo{Name: name, State: st, RTT: rtt}
	}
	var b strings.Builder
	b.WriteString("{")
	for i := range 10 {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "svc%d: (s%d | s%d) & s%d ; around(s%d, 10ms) ; *", i, i, i+1, (i+2)%12, i)
	}
	b.WriteString("}")
	return b.String(), v
}

func BenchmarkParsePlan10(b *testing.B) {
	src, v := tenServices()
	b.ReportAllocs()
	for b.Loop() {
		s, err := Parse(src)
		if err != nil {
			b.Fatal(err)
		}
		for i := range 10 {
			if _, err := s.Plan(fmt.Sprintf("svc%d", i), v); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkParse10(b *testing.B) {
	src, _ := tenServices()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(src); err != nil {
			b.Fatal(err)
		}
	}
}

func TestNearest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cands []string
		want  string
	}{
		{"post", []string{"comments", "posts"}, "posts"},
		{"Posts", []string{"posts"}, "posts"},
		{"comment", []string{"posts", "comments"}, "comments"},
		{"images", []string{"posts"}, ""},
		{"ab", []string{"ac"}, ""}, // one edit in two letters is no typo
		{"posts", nil, ""},
	} {
		got, ok := Nearest(tc.name, tc.cands)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("Nearest(%q, %v) = %q, %v; want %q", tc.name, tc.cands, got, ok, tc.want)
		}
	}
}

// TestPlanNearestAndReadOrder: a write's coordinator is the nearest
// reachable required target, an unmeasured one the farthest; a read tries
// the reachable required targets, then the standbys.
func TestPlanNearestAndReadOrder(t *testing.T) {
	for _, tc := range []struct {
		scope     string
		nearest   string // "" when none
		reachable []string
		read      []string
	}{
		{"rome & berlin", "berlin", []string{"rome", "berlin"}, []string{"rome", "berlin"}},
		{"oslo & rome", "rome", []string{"oslo", "rome"}, []string{"oslo", "rome"}},
		{"oslo & madrid", "oslo", []string{"oslo"}, []string{"oslo"}},
		{"berlin | rome", "berlin", []string{"berlin"}, []string{"berlin", "rome"}},
		{"madrid", "", nil, nil},
	} {
		s, err := Parse(tc.scope)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := s.Plan("x", europe())
		got, ok := p.Nearest()
		if ok != (tc.nearest != "") || got.Site != tc.nearest {
			t.Errorf("%s: Nearest = %q %v, want %q", tc.scope, got.Site, ok, tc.nearest)
		}
		check(t, tc.scope+": Reachable", p.Reachable(), tc.reachable)
		check(t, tc.scope+": ReadOrder", p.ReadOrder(), tc.read)
	}
}

// TestViewNearest: the local site first, then by RTT, unmeasured sites
// last in their given order.
func TestViewNearest(t *testing.T) {
	v := europe()
	got := v.Nearest([]string{"oslo", "rome", "madrid", "paris", "berlin"})
	want := []string{"paris", "berlin", "rome", "madrid", "oslo"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Nearest = %v, want %v", got, want)
	}
	if d := v.Distance("oslo"); d != Unmeasured {
		t.Fatalf("Distance(oslo) = %v, want Unmeasured", d)
	}
}
