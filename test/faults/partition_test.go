package faults

import (
	"cheops/internal/testkit"
	"encoding/json"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func title(p []map[string]any) []any {
	var out []any
	for _, it := range p {
		out = append(out, it["title"])
	}
	return out
}

// TestSymmetricCutConflictingUpdates: three sites replicate a post; rome
// is cut off from both others; paris and rome replace it, berlin patches
// another field; after the heal every replica holds the same data and
// operation log, the loser is visible as superseded, nothing is pending.
func TestSymmetricCutConflictingUpdates(t *testing.T) {
	nw := newNetwork(t, "paris", "berlin", "rome")
	nw.start()
	st, h, body := nw.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin & rome}", map[string]any{"title": "v0", "likes": 0})
	gid := h.Get("X-Cheops-Resource")
	if st != 201 || h.Get("X-Cheops-Sites") != "berlin=201, paris=201, rome=201" {
		t.Fatalf("create: %d %v %s", st, h, body)
	}
	nw.settled(gid, "paris", "berlin", "rome")

	start := time.Now()
	nw.cut("rome", "paris", true)
	nw.cut("rome", "berlin", true)
	nw.waitStates([]string{"paris", "berlin"}, []string{"rome"}, "down")
	t.Logf("cut noticed in %v", time.Since(start))

	nw.do("paris", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "from paris", "likes": 0})
	nw.do("berlin", "PATCH", "/svc/posts/posts/"+gid, "", map[string]any{"likes": 5})
	time.Sleep(5 * time.Millisecond) // rome's replace a millisecond later by the wall clock
	if st, h, _ := nw.do("rome", "PUT", "/svc/posts/posts/"+gid, "", map[string]any{"title": "from rome", "likes": 0}); st != 200 || !strings.Contains(h.Get("X-Cheops-Sites"), "paris=pending") {
		t.Fatalf("rome's update during the cut: %d %v", st, h)
	}

	healed := time.Now()
	nw.heal()
	res := nw.settled(gid, "paris", "berlin", "rome")
	t.Logf("converged %v after the heal", time.Since(healed))

	want := nw.posts("paris")
	for _, s := range []string{"berlin", "rome"} {
		if got := nw.posts(s); !reflect.DeepEqual(title(got), title(want)) || got[0]["likes"] != want[0]["likes"] {
			t.Fatalf("%s holds %v, paris %v", s, got, want)
		}
	}
	if want[0]["title"] != "from rome" {
		t.Fatalf("the later replace should win: %v", want)
	}
	logs := map[string]string{}
	for _, s := range []string{"paris", "berlin", "rome"} {
		body, _ := nw.get(s, "/v1/resources/"+gid)
		var r struct{ Operations []struct{ ID string } }
		json.Unmarshal(body, &r)
		logs[s] = fmt.Sprint(r.Operations)
	}
	if logs["paris"] != logs["berlin"] || logs["berlin"] != logs["rome"] {
		t.Fatalf("operation logs differ: %v", logs)
	}
	superseded := 0
	for _, v := range res["sites"].(map[string]any) {
		if s, ok := v.(map[string]any)["superseded"]; ok {
			superseded += len(s.([]any))
		}
	}
	if superseded == 0 {
		t.Fatalf("no superseded operation visible: %v", res["sites"])
	}
}

// TestOneDirectionCut: paris can no longer send to berlin (berlin can
// still send to paris); a replicated write from paris is pending for
// berlin and executed there after the heal.
func TestOneDirectionCut(t *testing.T) {
	nw := newNetwork(t, "paris", "berlin")
	nw.start()
	nw.cut("paris", "berlin", false)
	nw.waitStates([]string{"paris"}, []string{"berlin"}, "down")
	st, h, body := nw.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "one way"})
	gid := h.Get("X-Cheops-Resource")
	if st != 201 || h.Get("X-Cheops-Sites") != "berlin=pending, paris=201" {
		t.Fatalf("create: %d %v %s", st, h, body)
	}
	nw.heal()
	nw.settled(gid, "paris", "berlin")
	if p := nw.posts("berlin"); len(p) != 1 || p[0]["title"] != "one way" {
		t.Fatalf("berlin holds %v", p)
	}
}

// TestFlappingLink: the link between two sites goes down and up several
// times while writes continue; in the end both hold every write once.
func TestFlappingLink(t *testing.T) {
	nw := newNetwork(t, "paris", "berlin")
	nw.start()
	var gids []string
	for i := range 4 {
		nw.cut("paris", "berlin", true)
		_, h, _ := nw.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": fmt.Sprintf("flap %d", i)})
		gids = append(gids, h.Get("X-Cheops-Resource"))
		time.Sleep(700 * time.Millisecond) // the link stays down for a moment
		nw.heal()
		time.Sleep(700 * time.Millisecond) // and up for a moment
	}
	for _, gid := range gids {
		nw.settled(gid, "paris", "berlin")
	}
	if p := nw.posts("berlin"); len(p) != 4 {
		t.Fatalf("berlin holds %d posts, want 4: %v", len(p), p)
	}
	if p := nw.posts("paris"); len(p) != 4 {
		t.Fatalf("paris holds %d posts, want 4", len(p))
	}
	t.Logf("%d cuts", nw.cuts)
}

// TestOverlappingScopesCreatedConcurrently: {paris & berlin} and
// {berlin & rome} created at once; each exists on exactly its sites.
func TestOverlappingScopesCreatedConcurrently(t *testing.T) {
	nw := newNetwork(t, "paris", "berlin", "rome")
	nw.start()
	var wg sync.WaitGroup
	gids := make([]string, 2)
	for i, c := range []struct{ site, scope, title string }{
		{"paris", "{posts: paris & berlin}", "pb"},
		{"rome", "{posts: berlin & rome}", "br"},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, h, body := nw.do(c.site, "POST", "/svc/posts/posts", c.scope, map[string]any{"title": c.title})
			if code != 201 {
				t.Errorf("create %s at %s: %d %s", c.scope, c.site, code, body)
			}
			gids[i] = h.Get("X-Cheops-Resource")
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	nw.settled(gids[0], "paris", "berlin")
	nw.settled(gids[1], "berlin", "rome")
	for site, want := range map[string][]any{"paris": {"pb"}, "berlin": {"pb", "br"}, "rome": {"br"}} {
		got := title(nw.posts(site))
		if len(got) != len(want) {
			t.Fatalf("%s holds %v, want %v", site, got, want)
		}
	}
	if _, err := nw.get("rome", "/v1/resources/"+gids[0]); err == nil {
		t.Fatal("rome's catalog holds {paris & berlin}")
	}
	if _, err := nw.get("paris", "/v1/resources/"+gids[1]); err == nil {
		t.Fatal("paris' catalog holds {berlin & rome}")
	}
}

// TestUntrustedPeerRefused: a fourth namespace runs an agent nobody
// trusts; it cannot join, its requests cannot be forwarded, and the
// refusal is logged.
func TestUntrustedPeerRefused(t *testing.T) {
	nw := newNetwork(t, "paris", "berlin", "mallory")
	// paris and berlin trust each other only.
	nw.order = []string{"paris", "berlin"}
	for _, s := range []string{"paris", "berlin", "mallory"} {
		nw.startApp(s)
	}
	nw.startAgent("paris")
	nw.startAgent("berlin")
	nw.waitStates([]string{"paris", "berlin"}, []string{"paris", "berlin"}, "up")
	nw.order = []string{"paris", "berlin", "mallory"}
	nw.startAgent("mallory", "--trust-all")
	time.Sleep(3 * time.Second) // mallory's probes and announcements run meanwhile; the checks follow
	body, _ := nw.get("paris", "/v1/sites")
	if strings.Contains(string(body), "mallory") {
		t.Fatalf("paris lists mallory: %s", body)
	}
	if st, _, _ := nw.do("mallory", "GET", "/svc/posts/posts", "{posts: paris}", nil); st < 400 {
		t.Fatalf("mallory's request was forwarded to paris: %d", st)
	}
	testkit.Eventually(t, 30*time.Second, "paris logs the refusal", func() error {
		if !strings.Contains(nw.nodes["paris"].stderr.String(), "refused untrusted peer") {
			return fmt.Errorf("no refusal in paris' log")
		}
		return nil
	})
	_ = exec.Command
}
