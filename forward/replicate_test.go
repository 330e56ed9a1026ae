package forward

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/catalog"
	"cheops/scope"
)

// fakeMembership is a fixed view of the sites.
type fakeMembership struct{ view scope.View }

func (m fakeMembership) Site() string                  { return m.view.Local }
func (m fakeMembership) View() scope.View              { return m.view }
func (m fakeMembership) PeerOf(string) (peer.ID, bool) { return "", false }
func (m fakeMembership) SiteOf(peer.ID) (string, bool) { return "", false }

func newTestForwarder(rtt map[string]time.Duration) *Forwarder {
	view := scope.View{Local: "paris", Sites: map[string]scope.SiteInfo{"paris": {State: scope.Up, RTT: rtt}}}
	for s := range rtt {
		view.Sites[s] = scope.SiteInfo{State: scope.Up}
	}
	return &Forwarder{cfg: Config{Membership: fakeMembership{view}, SiteTimeout: 5 * time.Second}, stopCtx: context.Background()}
}

func testRequest(header http.Header) *request {
	r := httptest.NewRequest("PUT", "/svc/posts/posts/x", nil)
	for k, v := range header {
		r.Header[k] = v
	}
	return &request{r: r, svc: Service{Name: "posts"}}
}

func TestReplicaWait(t *testing.T) {
	f := newTestForwarder(map[string]time.Duration{"berlin": 2 * time.Millisecond, "tokyo": 40 * time.Millisecond})
	cases := []struct {
		name   string
		sites  []string
		header string
		config time.Duration
		want   time.Duration
	}{
		{"near replica: the floor", []string{"paris", "berlin"}, "", 0, DefaultMinReplicaWait},
		{"far replica: 4 RTT", []string{"paris", "berlin", "tokyo"}, "", 0, 160 * time.Millisecond},
		{"unmeasured replica: the floor", []string{"paris", "rome"}, "", 0, DefaultMinReplicaWait},
		{"configured", []string{"paris", "tokyo"}, "", 30 * time.Millisecond, 30 * time.Millisecond},
		{"per request", []string{"paris", "tokyo"}, "5ms", 30 * time.Millisecond, 5 * time.Millisecond},
		{"per request, capped by the site timeout", []string{"paris"}, "1h", 0, 5 * time.Second},
		{"malformed header ignored", []string{"paris"}, "soon", 0, DefaultMinReplicaWait},
	}
	for _, c := range cases {
		f.cfg.ReplicaWait = c.config
		h := http.Header{}
		if c.header != "" {
			h.Set(HeaderReplicaWait, c.header)
		}
		if got := f.replicaWait(testRequest(h), c.sites); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestFanOutAnswersAtTheDeadline: a write answers when every replica
// answered, or once the deadline passed and this site answered — a slow
// replica is left pending, never waited for; a slow local application is
// waited for.
func TestFanOutAnswersAtTheDeadline(t *testing.T) {
	f := newTestForwarder(nil)
	wr := write{reachable: []string{"paris", "berlin", "rome"}}
	cases := []struct {
		name    string
		delays  map[string]time.Duration
		wait    string
		answers []string
	}{
		{"all fast", map[string]time.Duration{}, "200ms", []string{"paris", "berlin", "rome"}},
		// 500 ms: time enough for berlin's goroutine on a loaded machine,
		// still far from rome's 3 s.
		{"one replica frozen", map[string]time.Duration{"rome": 3 * time.Second}, "500ms", []string{"paris", "berlin"}},
		{"local slower than the deadline", map[string]time.Duration{"paris": 150 * time.Millisecond, "rome": 3 * time.Second}, "10ms", []string{"paris", "berlin"}},
	}
	for _, c := range cases {
		delays := c.delays
		f.runAt = func(ctx context.Context, site string, _ *request, _ write, _ string) result {
			time.Sleep(delays[site])
			return result{site: site, status: 200}
		}
		start := time.Now()
		got := f.fanOut(context.Background(), testRequest(http.Header{HeaderReplicaWait: {c.wait}}), wr)
		took := time.Since(start)
		for _, s := range c.answers {
			if _, ok := got[s]; !ok {
				t.Errorf("%s: no answer from %s (got %v)", c.name, s, got)
			}
		}
		if len(got) != len(c.answers) {
			t.Errorf("%s: %d answers, want %d", c.name, len(got), len(c.answers))
		}
		if took >= 3*time.Second {
			t.Errorf("%s: waited for the frozen replica (%v)", c.name, took)
		}
	}
	f.bg.Wait()
}

func TestOperationHeaderRoundTrip(t *testing.T) {
	op := catalog.Operation{ID: catalog.NewID(time.Now()), Resource: catalog.NewID(time.Now()), Origin: "paris",
		At: catalog.Timestamp{Wall: 42, Logical: 3}, Method: "PATCH", Policy: catalog.PolicyOrdered,
		Path: "/posts/x#content-type=application%2Fmerge-patch%2Bjson", Body: []byte(`{"a":1}`), Targets: []string{"paris", "berlin"}}
	w, err := decodeOp(encodeOp(wireOp{Op: op, Create: true, Collection: "/posts"}))
	if err != nil {
		t.Fatal(err)
	}
	if w.Op.Body != nil {
		t.Fatalf("the body travels as the request's, not in the header")
	}
	op.Body = nil
	if w.Op.ID != op.ID || w.Op.At != op.At || w.Op.Path != op.Path || w.Op.Policy != op.Policy || !w.Create || w.Collection != "/posts" {
		t.Fatalf("round trip: %+v", w)
	}
	for _, bad := range []string{"", "!!!", encodeOp(wireOp{Op: catalog.Operation{ID: "x/y", Resource: op.Resource, Method: "PUT"}}),
		encodeOp(wireOp{Op: catalog.Operation{ID: op.ID, Resource: "1", Method: "PUT"}})} {
		if _, err := decodeOp(bad); err == nil {
			t.Errorf("decodeOp(%q) accepted", bad)
		}
	}
}

func TestOutcomeOfAResult(t *testing.T) {
	cases := []struct {
		r    result
		want string
		ok   bool
	}{
		{result{status: 200}, "200", true},
		{result{status: 201, outcomeText: "201"}, "201", true},
		{result{status: 200, outcomeText: catalog.SupersededPrefix + "x (later replace)"}, catalog.SupersededPrefix + "x (later replace)", true},
		{result{status: 422}, "422", false},
		{result{err: context.DeadlineExceeded}, catalog.OutcomePending, false},
	}
	for _, c := range cases {
		if got := c.r.outcome(); got != c.want || c.r.ok() != c.ok {
			t.Errorf("%+v: outcome %q ok %v, want %q %v", c.r, got, c.r.ok(), c.want, c.ok)
		}
	}
}
