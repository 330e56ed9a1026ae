package forward

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"testing"
	"time"

	"cheops/internal/testkit"
	"cheops/scope"
)

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

// BenchmarkCall: the CPU an executor's call to the application costs
// the agent, a create (POST) from 16 goroutines as the catch-up's
// workers send them, to a json-server in its own process (so the
// process's CPU is the agent's side alone): through net/http's
// Transport (callApp, before) and on the pooled connections
// (callPooled, what Call uses).
func BenchmarkCall(b *testing.B) {
	view := scope.View{Local: "a", Sites: map[string]scope.SiteInfo{"a": {State: scope.Up}}}
	body := []byte(`{"n": 1}`)
	for _, pooled := range []bool{false, true} {
		name := "transport"
		if pooled {
			name = "pool"
		}
		b.Run(name, func(b *testing.B) {
			// A fresh json-server each time: it writes its whole
			// database at every create, and slows as it grows.
			app, _ := testkit.StartJSONServerProcess(b, b.TempDir(), "posts")
			u, err := url.Parse(app)
			if err != nil {
				b.Fatal(err)
			}
			svc := Service{Name: "posts", URL: u}
			f := &Forwarder{cfg: Config{Membership: hopMembership{view, nil}, MaxBody: 64 << 10, SiteTimeout: 10 * time.Second},
				log: slog.New(slog.DiscardHandler), services: map[string]Service{"posts": svc}, client: &http.Client{}}
			f.addUpstream(svc)
			defer f.reads["posts"].close()
			b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
			cpu0 := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					h := http.Header{"Content-Type": {"application/json"}}
					req := &request{r: &http.Request{Method: http.MethodPost, Header: h}, svc: svc, body: body, canon: "a"}
					var res result
					if pooled {
						res = f.callPooled(ctx, f.reads["posts"], req, http.MethodPost, "/posts")
					} else {
						res = f.callApp(ctx, req, http.MethodPost, "/posts", nil)
					}
					if res.err != nil || res.status != http.StatusCreated {
						b.Errorf("create: %d %v", res.status, res.err)
						return
					}
				}
			})
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "agent-cpu-µs/op")
		})
	}
}
