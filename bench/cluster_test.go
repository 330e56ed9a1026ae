package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"cheops/internal/testkit"
)

// TestMain removes the binary testkit.BuildBinary built.
func TestMain(m *testing.M) { testkit.Main(m) }

// needJSONServer fails the test when json-server is missing (testkit.Tool).
func needJSONServer(t *testing.T) {
	t.Helper()
	testkit.Tool(t, testkit.JSONServer, "json-server")
}

func TestClusterOverEmulatedWAN(t *testing.T) {
	needJSONServer(t)
	ctx := context.Background()
	c, err := StartCluster(ctx, ClusterOptions{Binary: testkit.BuildBinary(t), Sites: []string{"paris", "berlin", "rome"}, Dir: t.TempDir(), RTT: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	// The agents measure the emulated round trip between them.
	var sites []struct {
		Site string  `json:"site"`
		RTT  float64 `json:"rtt_ms"`
	}
	if err := waitFor(ctx, 30*time.Second, "paris measures berlin", func() error {
		if err := c.getJSON(ctx, c.Site("paris").API+"/v1/sites", &sites); err != nil {
			return err
		}
		for _, s := range sites {
			if s.Site == "berlin" && s.RTT >= 40 {
				return nil
			}
		}
		return errors.New("berlin's RTT not measured yet")
	}); err != nil {
		t.Fatalf("%v: %+v", err, sites)
	}
	// A replicated create reaches both applications.
	code, hdr, body, err := c.Do(ctx, "paris", http.MethodPost, "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "hello"})
	if err != nil || code != http.StatusCreated {
		t.Fatalf("create: %d %s %v", code, body, err)
	}
	gid := hdr.Get("X-Cheops-Resource")
	for _, s := range []string{"paris", "berlin"} {
		var posts []map[string]any
		if err := c.getJSON(ctx, c.Site(s).App+"/posts", &posts); err != nil || len(posts) != 1 {
			t.Fatalf("%s holds %v (%v)", s, posts, err)
		}
	}
	// Cut berlin off: paris sees it down; after the heal, up again.
	c.Net.Cut([]string{"berlin"}, []string{"paris", "rome"})
	if err := c.WaitStates(ctx, 30*time.Second, []string{"paris"}, []string{"berlin"}, "down"); err != nil {
		t.Fatal(err)
	}
	code, _, body, err = c.Do(ctx, "paris", http.MethodPatch, "/svc/posts/posts/"+gid, "", map[string]any{"title": "during the cut"})
	if err != nil || code != http.StatusOK {
		t.Fatalf("patch during the cut: %d %s %v", code, body, err)
	}
	c.Net.Heal()
	if err := waitFor(ctx, 60*time.Second, "berlin catches up", func() error {
		var posts []map[string]any
		if err := c.getJSON(ctx, c.Site("berlin").App+"/posts", &posts); err != nil {
			return err
		}
		if len(posts) != 1 || posts[0]["title"] != "during the cut" {
			b, _ := json.Marshal(posts)
			return fmt.Errorf("berlin holds %s", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
