package forward

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"cheops/scope"
)

// peerMembership is a fixed view with the peers of some sites.
type peerMembership struct {
	fakeMembership
	peers map[string]peer.ID
}

func (m peerMembership) PeerOf(s string) (peer.ID, bool) { p, ok := m.peers[s]; return p, ok }

// TestSendRemoteDelivery: a failure before the request left this site is
// errNotDelivered (a write may run elsewhere); a failure once it was sent
// is not (the outcome there is unknown).
func TestSendRemoteDelivery(t *testing.T) {
	mn := mocknet.New()
	defer mn.Close()
	self, err := mn.GenPeer()
	if err != nil {
		t.Fatal(err)
	}
	var others []peer.ID
	for range 3 {
		h, err := mn.GenPeer()
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, h.ID())
		defer h.Close()
	}
	resetter, answerer := mn.Host(others[1]), mn.Host(others[2])
	for _, h := range []peer.ID{others[1], others[2]} {
		if _, err := mn.LinkPeers(self.ID(), h); err != nil {
			t.Fatal(err)
		}
	}
	resetter.SetStreamHandler(Protocol, func(s network.Stream) {
		_, _ = http.ReadRequest(bufio.NewReader(s)) // it arrived...
		s.Reset()                                   // ...and no answer comes back
	})
	answerer.SetStreamHandler(Protocol, func(s network.Stream) {
		defer s.Close()
		if _, err := http.ReadRequest(bufio.NewReader(s)); err == nil {
			_, _ = s.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
		}
	})
	view := scope.View{Local: "a", Sites: map[string]scope.SiteInfo{"a": {State: scope.Up}}}
	m := peerMembership{fakeMembership{view}, map[string]peer.ID{"unlinked": others[0], "resetter": others[1], "answerer": others[2]}}
	f := &Forwarder{cfg: Config{Host: self, Membership: m, SiteTimeout: 2 * time.Second, MaxBody: 1 << 10}}
	for _, tc := range []struct {
		site        string
		undelivered bool
		ok          bool
	}{
		{"nowhere", true, false},
		{"unlinked", true, false},
		{"resetter", false, false},
		{"answerer", false, true},
	} {
		req, _ := http.NewRequestWithContext(context.Background(), "POST", "http://cheops/svc/posts/posts", strings.NewReader(`{}`))
		_, _, err := f.sendRemote(context.Background(), tc.site, req, 1<<10)
		if (err == nil) != tc.ok || errors.Is(err, errNotDelivered) != tc.undelivered {
			t.Errorf("%s: %v (undelivered %v, want %v)", tc.site, err, errors.Is(err, errNotDelivered), tc.undelivered)
		}
	}
}

func TestWithDown(t *testing.T) {
	view := scope.View{Local: "a", Sites: map[string]scope.SiteInfo{"a": {State: scope.Up}, "b": {State: scope.Up}, "c": {State: scope.Suspect}}}
	got := withDown(view, []string{"c", "tokyo"})
	if got.Sites["c"].State != scope.Down || got.Sites["b"].State != scope.Up || len(got.Sites) != 3 {
		t.Fatalf("withDown: %+v", got.Sites)
	}
	if view.Sites["c"].State != scope.Suspect {
		t.Fatal("withDown changed its input")
	}
	// The planner then takes the next alternative of ';' and '|'.
	for _, tc := range []struct{ scope, want string }{
		{"c ; b", "b"},
		{"c | b", "b"},
		{"(c & b) ; a", "a"},
		{"c & b", "b"}, // no other alternative: c is pending, b runs it
	} {
		s, err := scope.Parse(tc.scope)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Plan("posts", got)
		if err != nil {
			t.Fatalf("%s: %v", tc.scope, err)
		}
		var reach []string
		for _, tg := range p.Targets {
			if tg.Required && tg.Reachable {
				reach = append(reach, tg.Site)
			}
		}
		if !slices.Equal(reach, []string{tc.want}) {
			t.Errorf("%s: runs on %v, want %s", tc.scope, reach, tc.want)
		}
	}
}

func TestFallbackHeader(t *testing.T) {
	req := &request{fellBack: []fallback{{"c", "site c: no stream: not delivered (dial backoff)"}, {"d", "line\r\nbreak; and more"}}}
	if got, want := req.fallbackHeader(), "c: site c: no stream: not delivered (dial backoff); d: line  break, and more"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	if got := req.failedSites(); !slices.Equal(got, []string{"c", "d"}) {
		t.Fatalf("failed sites %v", got)
	}
}

func TestUndelivered(t *testing.T) {
	nd := result{err: errNotDelivered}
	if !undelivered(map[string]result{"a": nd, "b": nd}) {
		t.Fatal("all undelivered")
	}
	for name, rs := range map[string]map[string]result{
		"none":          {},
		"one ran":       {"a": nd, "b": {status: 201}},
		"one ambiguous": {"a": nd, "b": {err: errors.New("read answer: stream reset")}},
	} {
		if undelivered(rs) {
			t.Errorf("%s: undelivered", name)
		}
	}
}

// TestHandOverFallsBackOnlyWhenUndelivered: a create handed to a site that
// cannot be reached runs on the next alternative; one handed to a site
// that received it and did not answer is answered 504 outcome_unknown and
// never sent anywhere else.
func TestHandOverFallsBackOnlyWhenUndelivered(t *testing.T) {
	mn := mocknet.New()
	defer mn.Close()
	self, err := mn.GenPeer()
	if err != nil {
		t.Fatal(err)
	}
	peers := map[string]peer.ID{}
	received := map[string]*atomic.Int32{}
	for _, name := range []string{"unlinked", "resetter", "answerer"} {
		h, err := mn.GenPeer()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		peers[name] = h.ID()
		received[name] = &atomic.Int32{}
		if name == "unlinked" {
			continue
		}
		if _, err := mn.LinkPeers(self.ID(), h.ID()); err != nil {
			t.Fatal(err)
		}
		h.SetStreamHandler(Protocol, func(s network.Stream) {
			if _, err := http.ReadRequest(bufio.NewReader(s)); err != nil {
				s.Reset()
				return
			}
			received[name].Add(1)
			if name == "resetter" {
				s.Reset()
				return
			}
			_, _ = s.Write([]byte("HTTP/1.1 201 Created\r\nX-Cheops-Resource: 01HZZZZZZZZZZZZZZZZZZZZZZ1\r\nContent-Length: 2\r\n\r\n{}"))
			s.Close()
		})
	}
	view := scope.View{Local: "a", Sites: map[string]scope.SiteInfo{"a": {State: scope.Up}}}
	for name := range peers {
		view.Sites[name] = scope.SiteInfo{State: scope.Suspect}
	}
	f := &Forwarder{cfg: Config{Host: self, Membership: peerMembership{fakeMembership{view}, peers}, SiteTimeout: 2 * time.Second, MaxBody: 1 << 10}}
	svc := Service{Name: "posts", IDField: "id"}
	for _, tc := range []struct {
		scope    string
		status   int
		site     string
		fallback string
		sent     map[string]int32
	}{
		{"unlinked ; answerer", 201, "answerer", "unlinked: ", map[string]int32{"answerer": 1}},
		{"resetter ; answerer", 504, "", "", map[string]int32{"resetter": 1}},
		{"unlinked", 503, "", "unlinked: ", nil},
	} {
		for _, n := range received {
			n.Store(0)
		}
		sc, err := scope.Parse(tc.scope)
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("POST", "/svc/posts/posts", strings.NewReader(`{}`))
		req := &request{r: r, svc: svc, route: svc.routeOf("/posts"), rawPath: "/posts", body: []byte(`{}`), scope: sc, explicit: true}
		plan, err := f.plan(req)
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		f.dispatch(w, req, plan)
		if w.Code != tc.status || w.Header().Get(HeaderSite) != tc.site || !strings.HasPrefix(w.Header().Get(HeaderFallback), tc.fallback) || (tc.fallback == "") != (w.Header().Get(HeaderFallback) == "") {
			t.Errorf("%s: %d %v %s", tc.scope, w.Code, w.Header(), w.Body)
		}
		for name, n := range received {
			if n.Load() != tc.sent[name] {
				t.Errorf("%s: %s received it %d times, want %d", tc.scope, name, n.Load(), tc.sent[name])
			}
		}
	}
}
