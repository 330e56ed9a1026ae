package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/errcode"
	"cheops/forward"
	"cheops/internal/testkit"
	"cheops/node"
)

var testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func testConfig(site, dir string, trust []peer.ID, peers ...string) Config {
	c := DefaultConfig()
	c.API = "127.0.0.1:0"
	c.Node.Site, c.Node.DataDir, c.Node.Trust, c.Node.Peers = site, dir, trust, peers
	c.Node.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	c.Node.ProbeInterval, c.Node.ProbeTimeout = 100*time.Millisecond, 500*time.Millisecond
	c.Node.AnnounceInterval, c.Node.MaxRedialBackoff = 200*time.Millisecond, 400*time.Millisecond
	c.Logger = testLogger
	return c
}

func identities(t testing.TB, sites ...string) (map[string]string, []peer.ID) {
	dirs := map[string]string{}
	var ids []peer.ID
	for _, s := range sites {
		dirs[s] = filepath.Join(t.TempDir(), s)
		_, id, err := node.LoadIdentity(dirs[s])
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return dirs, ids
}

func get(t *testing.T, url string, out any) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v\n%s", url, err, body)
		}
	}
	return resp.StatusCode, string(body)
}

func TestAPI(t *testing.T) {
	dirs, trust := identities(t, "paris", "berlin", "impostor")
	pc := testConfig("paris", dirs["paris"], trust)
	posts, err := forward.NewService("posts", "http://127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	pc.Services = []forward.Service{posts}
	pc.Handlers = map[string]http.Handler{"GET /v1/extra": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		errcode.WriteJSON(w, http.StatusTeapot, map[string]string{"extra": "yes"})
	})}
	paris, err := Start(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	defer paris.Close()
	if got := paris.Services(); len(got) != 1 || got[0].Name != "posts" || got[0].URL.String() != "http://127.0.0.1:8080" {
		t.Fatalf("services: %v", paris.Services())
	}
	addrs, err := os.ReadFile(filepath.Join(dirs["paris"], AddrsFile))
	if err != nil || !strings.Contains(string(addrs), "/p2p/"+paris.Node().ID().String()) {
		t.Fatalf("%s: %v %q", AddrsFile, err, addrs)
	}
	berlin, err := Start(context.Background(), testConfig("berlin", dirs["berlin"], trust, paris.Node().Addrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer berlin.Close()

	testkit.Eventually(t, 10*time.Second, "both up in /v1/sites", func() error {
		var sites []SiteJSON
		get(t, berlin.URL()+"/v1/sites", &sites)
		if len(sites) != 2 {
			return fmt.Errorf("sites %+v", sites)
		}
		for _, s := range sites {
			if s.State != "up" || s.Self != (s.Site == "berlin") || (!s.Self && (s.RTTms <= 0 || s.LastSeen == "")) {
				return fmt.Errorf("row %+v", s)
			}
			if _, err := time.Parse(time.RFC3339, s.LastSeen); err != nil {
				return fmt.Errorf("last_seen %q: %v", s.LastSeen, err)
			}
		}
		return nil
	})

	var h HealthJSON
	testkit.Eventually(t, 10*time.Second, "paris healthy with two sites up", func() error {
		if code, body := get(t, paris.URL()+"/v1/health", &h); code != 200 || h.Status != "ok" || h.Site != "paris" || h.Sites["up"] != 2 || h.Version == "" {
			return fmt.Errorf("health: %d %s", code, body)
		}
		return nil
	})
	code, body := get(t, paris.URL()+"/metrics", nil)
	for _, want := range []string{`cheops_site_state{site="berlin",state="up"} 1`, `cheops_site_rtt_seconds{site="berlin"}`, `cheops_sites{state="up"} 2`, "libp2p_rcmgr_", "go_goroutines"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	var e errcode.Body
	if code, _ := get(t, paris.URL()+"/v1/nothing", &e); code != 404 || e.Code != "not_found" || e.Error == "" {
		t.Errorf("unknown path: %d %+v", code, e)
	}
	var extra map[string]string
	if code, _ := get(t, paris.URL()+"/v1/extra", &extra); code != http.StatusTeapot || extra["extra"] != "yes" {
		t.Errorf("extra handler: %d %v", code, extra)
	}

	// A second peer claims "paris": berlin refuses it and says so.
	ic := testConfig("paris", dirs["impostor"], trust, berlin.Node().Addrs()[0]).Node
	ic.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	impostor, err := node.New(context.Background(), ic)
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	testkit.Eventually(t, 10*time.Second, "conflict in /v1/sites", func() error {
		var sites []SiteJSON
		get(t, berlin.URL()+"/v1/sites", &sites)
		for _, s := range sites {
			if s.Site == "paris" && s.Peer == paris.Node().ID().String() && len(s.Conflicts) == 1 && s.Conflicts[0] == impostor.ID().String() {
				return nil
			}
		}
		return fmt.Errorf("sites %+v", sites)
	})
	if get(t, berlin.URL()+"/v1/health", &h); h.Status != "conflict" || len(h.Conflicts) != 1 {
		t.Errorf("health with a conflict: %+v", h)
	}

	// Close removes the files scripts wait for.
	paris.Close()
	if _, err := os.Stat(filepath.Join(dirs["paris"], AddrsFile)); !os.IsNotExist(err) {
		t.Errorf("%s left after Close: %v", AddrsFile, err)
	}
}

func TestConfigValidate(t *testing.T) {
	dirs, trust := identities(t, "paris")
	good := testConfig("paris", dirs["paris"], trust)
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"bad api": func(c *Config) { c.API = "localhost" },
		"bad service name": func(c *Config) {
			c.Services = []forward.Service{{Name: "9p", URL: &url.URL{Scheme: "http", Host: "x"}}}
		},
		"bad service url": func(c *Config) {
			c.Services = []forward.Service{{Name: "posts", URL: &url.URL{Scheme: "x", Opaque: "y"}}}
		},
		"no service url": func(c *Config) { c.Services = []forward.Service{{Name: "posts"}} },
		"bad service kind": func(c *Config) {
			c.Services = []forward.Service{{Name: "posts", URL: &url.URL{Scheme: "http", Host: "x"}, Kind: "helm"}}
		},
		"service twice": func(c *Config) {
			u := &url.URL{Scheme: "http", Host: "x"}
			c.Services = []forward.Service{{Name: "posts", URL: u}, {Name: "posts", URL: u}}
		},
		"bad node": func(c *Config) { c.Node.Site = "" },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAPIPortInUse(t *testing.T) {
	dirs, trust := identities(t, "paris", "berlin")
	a, err := Start(context.Background(), testConfig("paris", dirs["paris"], trust))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	c := testConfig("berlin", dirs["berlin"], trust)
	c.API = strings.TrimPrefix(a.URL(), "http://")
	if _, err := Start(context.Background(), c); err == nil {
		t.Fatal("a second agent started on a port in use")
	}
	// Nothing of berlin's was left running: its data directory is free.
	c.API = "127.0.0.1:0"
	b, err := Start(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}
