package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/forward"
	"cheops/internal/testkit"
)

// post sends a JSON body to a site's agent from any goroutine (no t.Fatal).
func (c *cluster) post(site, path string, body any) (int, []byte, error) {
	data, _ := json.Marshal(body)
	resp, err := http.Post(c.sites[site].agent.URL()+path, "application/json", bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// copies lists the items titled title in a site's application, read
// straight from its json-server.
func (c *cluster) copies(t *testing.T, site, title string) []string {
	t.Helper()
	var ids []string
	for _, it := range c.sites[site].app.items(t, "posts") {
		if it["title"] == title {
			ids = append(ids, fmt.Sprint(it["id"]))
		}
	}
	return ids
}

// placementAgrees waits until every site's catalog shows the same replica
// set for gid (a site outside it does not hold the resource) and returns
// it, with the local id the catalogs give target.
func (c *cluster) placementAgrees(t *testing.T, gid, target string, holders ...string) (sites []string, local string) {
	t.Helper()
	testkit.Eventually(t, 20*time.Second, "every site agrees on where "+gid+" is", func() error {
		var first catalog.Resource
		for i, s := range holders {
			res, err := c.sites[s].agent.Catalog().Get(t.Context(), gid)
			if err != nil {
				return fmt.Errorf("%s: %v", s, err)
			}
			if i == 0 {
				first = res
				continue
			}
			if !slices.Equal(res.Sites, first.Sites) || res.PerSite[target].LocalID != first.PerSite[target].LocalID || res.Scope != first.Scope {
				return fmt.Errorf("%s sees %v %q, %s sees %v %q", holders[0], first.Sites, first.PerSite[target].LocalID, s, res.Sites, res.PerSite[target].LocalID)
			}
		}
		res, err := c.sites[target].agent.Catalog().Get(t.Context(), gid)
		in := slices.Contains(first.Sites, target)
		switch {
		case in && err != nil:
			return fmt.Errorf("%s is in %v but its catalog says %v", target, first.Sites, err)
		case in && (!slices.Equal(res.Sites, first.Sites) || res.PerSite[target].LocalID != first.PerSite[target].LocalID):
			return fmt.Errorf("%s sees %v %q, %s %v %q", target, res.Sites, res.PerSite[target].LocalID, holders[0], first.Sites, first.PerSite[target].LocalID)
		case !in && err == nil:
			return fmt.Errorf("%s is not in %v but its catalog holds %s", target, first.Sites, gid)
		}
		sites, local = first.Sites, first.PerSite[target].LocalID
		return nil
	})
	return sites, local
}

// Any number of concurrent attaches of one resource to one site, through
// different agents, leave exactly one copy in that site's application,
// and every catalog names that copy. Each attach is answered 200 (it made
// or adopted the copy) or 400 (its agent already saw the site attached).
func TestConcurrentAttachesLeaveOneCopy(t *testing.T) {
	const reps, perOrigin = 8, 2
	origins := []string{"paris", "berlin", "madrid"}
	c := newCluster(t, "paris", "berlin", "madrid", "rome")
	for rep := range reps {
		title := fmt.Sprintf("attached at once %d", rep)
		r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin & madrid}", map[string]any{"title": title})
		gid := r.header.Get(forward.HeaderResource)
		if r.status != http.StatusCreated || gid == "" {
			t.Fatalf("create: %d %s", r.status, r.body)
		}
		c.settled(t, gid, origins...)

		n := len(origins) * perOrigin
		type answer struct {
			status int
			body   []byte
			err    error
		}
		answers := make([]answer, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				s, b, err := c.post(origins[i%len(origins)], "/v1/resources/"+gid+"/attach", map[string]any{"site": "rome"})
				answers[i] = answer{s, b, err}
			}()
		}
		close(start)
		wg.Wait()
		attached := 0
		for i, a := range answers {
			switch {
			case a.err != nil:
				t.Fatalf("rep %d: attach through %s: %v", rep, origins[i%len(origins)], a.err)
			case a.status == http.StatusOK:
				attached++
			case a.status == http.StatusBadRequest && strings.Contains(string(a.body), "already holds"):
			default:
				t.Fatalf("rep %d: attach through %s: %d %s", rep, origins[i%len(origins)], a.status, a.body)
			}
		}
		if attached == 0 {
			t.Fatalf("rep %d: no attach answered 200", rep)
		}
		sites, local := c.placementAgrees(t, gid, "rome", origins...)
		if !slices.Equal(sites, []string{"paris", "berlin", "madrid", "rome"}) {
			t.Fatalf("rep %d: replica set %v", rep, sites)
		}
		if got := c.copies(t, "rome", title); len(got) != 1 || got[0] != local {
			t.Fatalf("rep %d: %d attaches answered 200; rome's application holds %v, the catalogs name %q", rep, attached, got, local)
		}
		for _, s := range origins {
			if got := c.copies(t, s, title); len(got) != 1 {
				t.Fatalf("rep %d: %s holds %v", rep, s, got)
			}
		}
		t.Logf("rep %d: %d of %d attaches answered 200, one copy (%s) in rome", rep, attached, n, local)
	}
	// The scope shown is the placement, the one it was created with beside it.
	var list []catalog.Resource
	c.do("berlin", "GET", "/v1/resources", "", nil).json(t, &list)
	for _, res := range list {
		if res.Scope != "{posts: paris & berlin & madrid & rome}" || res.CreatedScope != "{posts: paris & berlin & madrid}" {
			t.Fatalf("%s shows scope %q, created with %q", res.ID, res.Scope, res.CreatedScope)
		}
	}
}

// Attaches and detaches --delete of one site, through different agents
// at once, end in one of the two documented states on every site: the
// site is in the replica set on every catalog and its application holds
// exactly the one copy they name, or it is in none and its application
// holds no copy.
func TestDetachRacingAttach(t *testing.T) {
	const rounds, perRound = 6, 4
	holders := []string{"paris", "berlin", "madrid"}
	c := newCluster(t, "paris", "berlin", "madrid", "rome")
	title := "attached and detached at once"
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin & madrid}", map[string]any{"title": title})
	gid := r.header.Get(forward.HeaderResource)
	c.settled(t, gid, holders...)

	// Each round: attach through paris and madrid, detach through berlin
	// and paris, each perRound times back to back, all at once.
	type actor struct {
		site, action string
		body         map[string]any
	}
	actors := []actor{
		{"paris", "attach", map[string]any{"site": "rome"}},
		{"madrid", "attach", map[string]any{"site": "rome"}},
		{"berlin", "detach", map[string]any{"site": "rome", "delete": true}},
		{"paris", "detach", map[string]any{"site": "rome", "delete": true}},
	}
	ended := map[bool]int{}
	for round := range rounds {
		done := make([]int, len(actors))
		errs := make(chan error, len(actors)*perRound)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, a := range actors {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for range perRound {
					s, b, err := c.post(a.site, "/v1/resources/"+gid+"/"+a.action, a.body)
					switch {
					case err != nil:
						errs <- fmt.Errorf("%s through %s: %v", a.action, a.site, err)
					case s == http.StatusOK:
						done[i]++
					case s == http.StatusBadRequest && (strings.Contains(string(b), "already holds") || strings.Contains(string(b), "does not hold")):
					default:
						errs <- fmt.Errorf("%s through %s: %d %s", a.action, a.site, s, b)
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", round, err)
		}
		if t.Failed() {
			t.FailNow()
		}
		sites, local := c.placementAgrees(t, gid, "rome", holders...)
		in := slices.Contains(sites, "rome")
		got := c.copies(t, "rome", title)
		switch {
		case in && (len(got) != 1 || got[0] != local):
			t.Fatalf("round %d (answered 200: %v): rome is in %v, the catalogs name copy %q, its application holds %v", round, done, sites, local, got)
		case !in && len(got) != 0:
			t.Fatalf("round %d (answered 200: %v): rome is not in %v, its application holds %v", round, done, sites, got)
		}
		ended[in]++
		t.Logf("round %d: answered 200 %v (attach paris, attach madrid, detach berlin, detach paris); rome attached at the end: %v", round, done, in)
	}
	t.Logf("rounds ending attached: %d, detached: %d", ended[true], ended[false])
	for _, s := range holders {
		if got := c.copies(t, s, title); len(got) != 1 {
			t.Fatalf("%s holds %v", s, got)
		}
	}
}

// The web view shows the placement as it is after an attach: the scope of
// the new replica set, the scope it was created with beside it, and the
// attached site's copy.
func TestWebViewShowsThePlacementAfterAnAttach(t *testing.T) {
	bin := chromium(t)
	c := newCluster(t, "paris", "berlin", "rome")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "moved"})
	gid := r.header.Get(forward.HeaderResource)
	c.settled(t, gid, "paris", "berlin")
	if r := c.do("berlin", "POST", "/v1/resources/"+gid+"/attach", "", map[string]any{"site": "rome"}); r.status != http.StatusOK {
		t.Fatalf("attach: %d %s", r.status, r.body)
	}
	c.placementAgrees(t, gid, "rome", "paris", "berlin")
	want := []string{gid, "{posts: paris &amp; berlin &amp; rome}  (created with {posts: paris &amp; berlin})", "rome=1"}
	renders(t, bin, c.sites["paris"].agent.URL()+"/", want)
}
