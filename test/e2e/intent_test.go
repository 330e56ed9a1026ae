package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"cheops/agent"
	"cheops/catalog"
	"cheops/crdt"
	"cheops/forward"
	"cheops/internal/testkit"
	"cheops/replica"
)

// unusedApp stands for the application while the agent is stopped: the
// test only writes the journal, nothing is executed.
type unusedApp struct{}

func (unusedApp) Call(context.Context, string, string, string, http.Header, []byte) (replica.Answer, error) {
	return replica.Answer{}, errors.New("the agent is stopped")
}
func (unusedApp) LocalID(string, string, []byte) (string, bool) { return "", false }

// TestIntentLeftByACrashIsRecorded: berlin stopped after journaling a
// write and before recording it (what a crash between the fan-out and the
// catalog write leaves). When berlin starts again it records the write,
// pending everywhere it has not run, and every replica executes it: no
// site is left holding a write the others never hear of.
func TestIntentLeftByACrashIsRecorded(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "v1"})
	gid := r.header.Get(forward.HeaderResource)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	c.settled(t, gid, "paris", "berlin")

	c.stop("berlin")
	store, err := crdt.OpenStore(filepath.Join(c.sites["berlin"].dir, agent.StoreDir))
	if err != nil {
		t.Fatal(err)
	}
	x, err := replica.NewExecutor(replica.Config{App: unusedApp{}, Journal: store})
	if err != nil {
		t.Fatal(err)
	}
	op := catalog.Operation{ID: catalog.NewID(time.Now()), Resource: gid, Origin: "berlin", At: catalog.Timestamp{Wall: time.Now().UnixMilli()},
		Method: http.MethodPut, Path: "/posts/" + gid, Body: []byte(`{"title": "left by a crash"}`), Targets: []string{"paris", "berlin"}}
	if err := x.Intend(context.Background(), replica.Intent{Op: op}); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	c.start("berlin")
	c.waitUp("paris", "berlin")
	res := c.settled(t, gid, "paris", "berlin")
	found := false
	for _, o := range res.Operations {
		found = found || o.ID == op.ID
	}
	if !found {
		t.Fatalf("the journaled write is not in the catalog: %+v", res.Operations)
	}
	for _, s := range []string{"paris", "berlin"} {
		testkit.Eventually(t, 10*time.Second, s+" holds the journaled write", func() error {
			if got := c.copyOf(t, s, res); got["title"] != "left by a crash" {
				return fmt.Errorf("%s holds %v", s, got)
			}
			return nil
		})
	}
}
