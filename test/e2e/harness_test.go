package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/agent"
	"cheops/forward"
	"cheops/internal/testkit"
	"cheops/node"
	"cheops/scope"
)

// logger is the agents' logger: warnings and errors, or the level
// CHEOPS_TEST_LOG names (debug, info) to follow a test's agents.
var logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: testLogLevel()}))

func testLogLevel() slog.Level {
	var l slog.Level
	if l.UnmarshalText([]byte(os.Getenv("CHEOPS_TEST_LOG"))) != nil {
		return slog.LevelWarn
	}
	return l
}

// app is one json-server instance: this site's copy of the application.
type app struct {
	url string
	pid int
}

// startApp runs json-server with posts and comments, its data in dir
// (testkit.StartJSONServer).
func startApp(t testing.TB, dir string) *app {
	t.Helper()
	url, pid := testkit.StartJSONServerProcess(t, dir, "posts", "comments")
	return &app{url: url, pid: pid}
}

// items reads a collection straight from the application.
func (a *app) items(t testing.TB, collection string) []map[string]any {
	t.Helper()
	var out []map[string]any
	resp, err := http.Get(a.url + "/" + collection)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// site is an agent with its application.
type site struct {
	name  string
	dir   string
	app   *app
	agent *agent.Agent
}

type cluster struct {
	t     testing.TB
	ids   []peer.ID
	sites map[string]*site
	boot  []string
	// extra services every agent serves beside posts and comments.
	extra map[string]string
	// tune, when set, adjusts each agent's configuration before it starts.
	tune func(*agent.Config)
}

// newCluster starts one agent and one json-server per named site, all
// trusting each other, and waits until they see each other up.
func newCluster(t testing.TB, names ...string) *cluster {
	return newClusterWith(t, nil, names...)
}

// newClusterWith is newCluster with extra services (NAME → URL) on every
// agent.
func newClusterWith(t testing.TB, extra map[string]string, names ...string) *cluster {
	return newClusterTuned(t, extra, nil, names...)
}

// newClusterTuned is newClusterWith with each agent's configuration
// adjusted by tune.
func newClusterTuned(t testing.TB, extra map[string]string, tune func(*agent.Config), names ...string) *cluster {
	c := &cluster{t: t, sites: map[string]*site{}, extra: extra, tune: tune}
	for _, n := range names {
		dir := filepath.Join(t.TempDir(), n)
		if _, id, err := node.LoadIdentity(dir); err != nil {
			t.Fatal(err)
		} else {
			c.ids = append(c.ids, id)
		}
		c.sites[n] = &site{name: n, dir: dir, app: startApp(t, t.TempDir())}
	}
	for _, n := range names {
		c.start(n)
	}
	c.waitUp(names...)
	t.Cleanup(func() {
		for _, s := range c.sites {
			if s.agent != nil {
				s.agent.Close()
			}
		}
	})
	return c
}

func (c *cluster) start(name string) {
	c.t.Helper()
	s := c.sites[name]
	cfg := agent.DefaultConfig()
	cfg.API = "127.0.0.1:0"
	cfg.Node.Site, cfg.Node.DataDir, cfg.Node.Trust, cfg.Node.Peers = name, s.dir, c.ids, c.boot
	cfg.Node.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Node.ProbeInterval, cfg.Node.ProbeTimeout = 100*time.Millisecond, 500*time.Millisecond
	cfg.Node.AnnounceInterval, cfg.Node.MaxRedialBackoff = 200*time.Millisecond, 300*time.Millisecond
	urls := map[string]string{"posts": s.app.url, "comments": s.app.url}
	maps.Copy(urls, c.extra)
	cfg.Services = nil
	for _, name := range slices.Sorted(maps.Keys(urls)) {
		svc, err := forward.NewService(name, urls[name])
		if err != nil {
			c.t.Fatal(err)
		}
		cfg.Services = append(cfg.Services, svc)
	}
	cfg.MaxBody = 64 << 10
	// These tests assert which replicas answered; under make test's load
	// (-race, packages in parallel on 2 cores) a replica can take longer
	// than the default deadline (max(50 ms, 4 RTT)) and be reported
	// pending although it is up. The deadline itself is tested in
	// forward's unit tests and measured by cheops bench availability.
	cfg.ReplicaWait = time.Second
	cfg.Logger = logger
	if c.tune != nil {
		c.tune(&cfg)
	}
	a, err := agent.Start(context.Background(), cfg)
	if err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	s.agent = a
	if c.boot == nil {
		c.boot = a.Node().Addrs()[:1]
	}
}

func (c *cluster) stop(name string) {
	c.sites[name].agent.Close()
	c.sites[name].agent = nil
}

func (c *cluster) waitUp(names ...string) {
	c.t.Helper()
	c.waitState(scope.Up, names, names)
}

// waitState waits until every observer sees every subject in state.
func (c *cluster) waitState(state scope.State, observers, subjects []string) {
	c.t.Helper()
	testkit.Eventually(c.t, 20*time.Second, "sites "+state.String(), func() error {
		for _, a := range observers {
			for _, b := range subjects {
				if a == b {
					continue
				}
				if st := c.sites[a].agent.Node().View().Sites[b].State; st != state {
					return fmt.Errorf("%s sees %s %v", a, b, st)
				}
			}
		}
		return nil
	})
}

// response is what a user gets back from an agent.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB, out any) {
	t.Helper()
	if err := json.Unmarshal(r.body, out); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
}

// do sends a request to a site's agent with an optional scope.
func (c *cluster) do(site, method, path, scopeText string, body any) response {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, c.sites[site].agent.URL()+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if scopeText != "" {
		req.Header.Set(forward.HeaderScope, scopeText)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}
