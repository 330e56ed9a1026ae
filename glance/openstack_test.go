package glance_test

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/agent"
	"cheops/forward"
	"cheops/glance"
	"cheops/internal/testkit"
	"cheops/node"
	"cheops/scope"
)

// The end-to-end tests of this package run real Glance sites (Debian's
// glance-api) and the real openstack CLI: `make e2e-openstack` installs
// them (contrib/openstack/glance-sites.sh install) and sets
// CHEOPS_OPENSTACK=1. Without it they skip, so that `make test` never
// installs OpenStack.
const enableEnv = "CHEOPS_OPENSTACK"

var logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// Named scopes every agent of the tests defines: the openstack CLI takes
// a base URL and cannot carry percent signs.
var names = map[string]string{
	"ab":  "{glance: a & b}",
	"abc": "{glance: a & b & c}",
	"c":   "{glance: c}",
}

// world is three Glance sites, each behind its own agent.
type world struct {
	t      testing.TB
	glance map[string]string // site → its Glance's URL
	agents map[string]*agent.Agent
	cfgs   map[string]agent.Config
	dir    string
}

func requireOpenStack(t testing.TB) {
	t.Helper()
	if os.Getenv(enableEnv) != "1" {
		t.Skipf("real Glance sites and the openstack CLI: run `make e2e-openstack` (or set %s=1 after contrib/openstack/glance-sites.sh install)", enableEnv)
	}
	for _, b := range []string{"glance-api", "glance-manage", "openstack", "curl"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s is not installed (contrib/openstack/glance-sites.sh install)", b)
		}
	}
}

// freeBase finds n consecutive free loopback ports.
func freeBase(t testing.TB, n int) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ok := base+n < 65536
		for i := 1; i < n && ok; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

func script() string {
	return filepath.Join("..", "contrib", "openstack", "glance-sites.sh")
}

// newWorld starts Glance sites a, b and c with contrib/openstack's
// script, and an agent in front of each.
func newWorld(t testing.TB) *world {
	requireOpenStack(t)
	w := &world{t: t, glance: map[string]string{}, agents: map[string]*agent.Agent{}, cfgs: map[string]agent.Config{}, dir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sitesDir := filepath.Join(w.dir, "glance")
	out, err := exec.CommandContext(ctx, script(), "start", sitesDir, "3", fmt.Sprint(freeBase(t, 3))).CombinedOutput()
	t.Cleanup(func() { exec.Command(script(), "stop", sitesDir).Run() })
	if err != nil {
		t.Fatalf("start the Glance sites: %v\n%s", err, out)
	}
	for _, line := range strings.Fields(string(out)) {
		if name, u, ok := strings.Cut(line, "="); ok && strings.HasPrefix(u, "http://") {
			w.glance[name] = u
		}
	}
	if len(w.glance) != 3 {
		t.Fatalf("start printed %q", out)
	}
	var ids []peer.ID
	dirs := map[string]string{}
	for _, s := range []string{"a", "b", "c"} {
		dirs[s] = filepath.Join(w.dir, "agent-"+s)
		_, id, err := node.LoadIdentity(dirs[s])
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	var boot []string
	for _, s := range []string{"a", "b", "c"} {
		cfg := agent.DefaultConfig()
		cfg.API = "127.0.0.1:0"
		cfg.Node.Site, cfg.Node.DataDir, cfg.Node.Trust, cfg.Node.Peers = s, dirs[s], ids, boot
		cfg.Node.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		cfg.Node.ProbeInterval, cfg.Node.ProbeTimeout = 100*time.Millisecond, 500*time.Millisecond
		cfg.Node.AnnounceInterval, cfg.Node.MaxRedialBackoff = 200*time.Millisecond, 300*time.Millisecond
		// A Glance create takes 0.1-1 s on a loaded machine: the tests
		// assert that every replica ran it, so wait for them (the
		// default deadline, max(50 ms, 4 RTT), would answer them pending).
		cfg.ReplicaWait = 10 * time.Second
		svc, err := forward.NewService("glance", w.glance[s])
		if err != nil {
			t.Fatal(err)
		}
		svc.Kind = forward.KindGlance
		cfg.Services = []forward.Service{svc}
		cfg.Scopes = names
		cfg.Logger = logger
		w.cfgs[s] = cfg
		w.start(s)
		if boot == nil {
			boot = w.agents[s].Node().Addrs()[:1]
		}
	}
	t.Cleanup(func() {
		for _, a := range w.agents {
			if a != nil {
				a.Close()
			}
		}
	})
	testkit.Eventually(t, 30*time.Second, "sites up", func() error {
		for a, ag := range w.agents {
			if ag == nil {
				continue
			}
			for b := range w.agents {
				if st := ag.Node().View().Sites[b].State; a != b && st != scope.Up {
					return fmt.Errorf("%s sees %s %v", a, b, st)
				}
			}
		}
		return nil
	})
	return w
}

// start starts a site's agent (again).
func (w *world) start(site string) {
	w.t.Helper()
	a, err := agent.Start(context.Background(), w.cfgs[site])
	if err != nil {
		w.t.Fatalf("start agent %s: %v", site, err)
	}
	w.agents[site] = a
}

// stop stops a site's agent; its Glance runs on.
func (w *world) stop(site string) {
	w.agents[site].Close()
	w.agents[site] = nil
}

// waitState waits until every running agent sees site in state.
func (w *world) waitState(site string, state scope.State) {
	w.t.Helper()
	testkit.Eventually(w.t, 30*time.Second, site+" "+state.String(), func() error {
		for name, a := range w.agents {
			if a == nil || name == site {
				continue
			}
			if st := a.Node().View().Sites[site].State; st != state {
				return fmt.Errorf("%s sees %s %v", name, site, st)
			}
		}
		return nil
	})
}

// endpoint is the openstack CLI's --os-endpoint for a named scope through
// a site's agent.
func (w *world) endpoint(site, name string) string {
	return w.agents[site].URL() + "/s/" + name + "/svc/glance"
}

// openstack runs the openstack CLI against endpoint.
func (w *world) openstack(endpoint string, args ...string) string {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openstack", append([]string{"--os-auth-type", "none", "--os-endpoint", endpoint}, args...)...)
	cmd.Dir = w.dir
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		w.t.Fatalf("openstack %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	return string(out)
}

// direct reads an image straight from a site's Glance: its status code
// and body.
func (w *world) direct(site, id string) (int, map[string]any) {
	w.t.Helper()
	resp, err := http.Get(w.glance[site] + "/v2/images/" + id)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	var im map[string]any
	json.NewDecoder(resp.Body).Decode(&im)
	return resp.StatusCode, im
}

func get(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The openstack CLI, unchanged, through three agents: an image created
// with {glance: a & b} is active on a and b with one id and one checksum
// and absent from c; a list over a & b & c is the union; updates and tags
// reach every replica; attached to c, the image is served there with its
// data; the delete reaches a, b and c.
func TestOpenStackCLI(t *testing.T) {
	w := newWorld(t)
	data := make([]byte, 4<<20+7)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(w.dir, "img.raw"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := fmt.Sprintf("%x", md5.Sum(data))

	// 1. Create with its data on a & b.
	var created struct {
		ID string `json:"id"`
	}
	out := w.openstack(w.endpoint("a", "ab"), "image", "create", "--disk-format", "raw", "--container-format", "bare", "--file", "img.raw", "cirros-ab", "-f", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID == "" {
		t.Fatalf("image create: %v\n%s", err, out)
	}
	id := created.ID
	for _, s := range []string{"a", "b"} {
		testkit.Eventually(t, 30*time.Second, "image active on "+s, func() error {
			code, im := w.direct(s, id)
			if code != http.StatusOK || im["status"] != "active" || im["checksum"] != sum || im["size"] != float64(len(data)) {
				return fmt.Errorf("%s: %d %v", s, code, im)
			}
			return nil
		})
	}
	if code, _ := w.direct("c", id); code != http.StatusNotFound {
		t.Fatalf("c's Glance answers %d for the image", code)
	}
	testkit.Eventually(t, 10*time.Second, "a's catalog holds the image", func() error {
		if !strings.Contains(get(t, w.agents["a"].URL()+"/v1/resources?service=glance"), glance.Images+"/"+id) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if body := get(t, w.agents["c"].URL()+"/v1/resources?service=glance"); strings.Contains(body, id) {
		t.Fatalf("c's catalog holds the image: %s", body)
	}

	// 2. One more image on c only, then the union of a, b and c.
	out = w.openstack(w.endpoint("a", "c"), "image", "create", "--disk-format", "raw", "--container-format", "bare", "cirros-c", "-f", "json")
	var onC struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &onC); err != nil || onC.ID == "" {
		t.Fatalf("image create on c: %v\n%s", err, out)
	}
	var rows []struct {
		ID   string `json:"ID"`
		Name string `json:"Name"`
	}
	out = w.openstack(w.endpoint("b", "abc"), "image", "list", "-f", "json")
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("image list: %v\n%s", err, out)
	}
	var got []string
	for _, r := range rows {
		got = append(got, r.Name)
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "cirros-ab cirros-ab cirros-c" {
		t.Fatalf("image list over a & b & c: %v", got)
	}
	var list struct {
		Images []map[string]any `json:"images"`
	}
	json.Unmarshal([]byte(get(t, w.endpoint("c", "abc")+"/v2/images")), &list)
	got = nil
	for _, im := range list.Images {
		got = append(got, fmt.Sprint(im["name"], "@", im[glance.SiteField]))
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "cirros-ab@a cirros-ab@b cirros-c@c" {
		t.Fatalf("merged list through c: %v", got)
	}

	// 3. Property, tags and delete by id, through b's agent without a
	// scope: the catalog knows the image's replicas.
	plain := w.agents["b"].URL() + "/svc/glance"
	w.openstack(plain, "image", "set", "--property", "color=blue", "--tag", "green", id)
	req, _ := http.NewRequest(http.MethodPut, plain+"/v2/images/"+id+"/tags/fresh", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PUT a tag: %v %v", resp, err)
	}
	for _, s := range []string{"a", "b"} {
		testkit.Eventually(t, 30*time.Second, "property and tags on "+s, func() error {
			_, im := w.direct(s, id)
			tags := fmt.Sprint(im["tags"])
			if im["color"] != "blue" || !strings.Contains(tags, "green") || !strings.Contains(tags, "fresh") {
				return fmt.Errorf("%s: %v", s, im)
			}
			return nil
		})
	}
	// 4. Attach the image to c: c's Glance gets its metadata from the
	// attach and its data from a holder (the repair), with the checksum.
	rid, ok := w.agents["a"].Catalog().LookupLocal("glance", "a", glance.Images+"/"+id)
	if !ok {
		t.Fatal("a's catalog does not know the image")
	}
	resp, err := http.Post(w.agents["a"].URL()+"/v1/resources/"+rid+"/attach", "application/json", strings.NewReader(`{"site": "c"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("attach to c: %d %s", resp.StatusCode, body)
	}
	testkit.Eventually(t, 60*time.Second, "c serves the image with its data", func() error {
		code, im := w.direct("c", id)
		if code != http.StatusOK || im["status"] != "active" || im["checksum"] != sum || im["color"] != "blue" {
			return fmt.Errorf("c: %d %v", code, im)
		}
		return nil
	})

	w.openstack(plain, "image", "delete", id)
	for _, s := range []string{"a", "b", "c"} {
		testkit.Eventually(t, 30*time.Second, "image deleted on "+s, func() error {
			if code, _ := w.direct(s, id); code != http.StatusNotFound {
				return fmt.Errorf("%s answers %d", s, code)
			}
			return nil
		})
	}
	if code, _ := w.direct("c", onC.ID); code != http.StatusOK {
		t.Fatalf("c's other image: %d", code)
	}
}

// b's agent is down while an image is created with {glance: a & b} and
// its data uploaded: once b's agent is back, b's Glance has the image,
// created once, with the data fetched from a through the agents and the
// same checksum.
func TestOpenStackReplicaAway(t *testing.T) {
	w := newWorld(t)
	data := make([]byte, 3<<20+11)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(w.dir, "img.raw"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := fmt.Sprintf("%x", md5.Sum(data))
	w.stop("b")
	w.waitState("b", scope.Down)

	var created struct {
		ID string `json:"id"`
	}
	out := w.openstack(w.endpoint("a", "ab"), "image", "create", "--disk-format", "raw", "--container-format", "bare", "--file", "img.raw", "away", "-f", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID == "" {
		t.Fatalf("image create: %v\n%s", err, out)
	}
	id := created.ID
	if code, im := w.direct("a", id); code != http.StatusOK || im["status"] != "active" || im["checksum"] != sum {
		t.Fatalf("a: %d %v", code, im)
	}
	if code, _ := w.direct("b", id); code != http.StatusNotFound {
		t.Fatalf("b's Glance has the image while its agent is down: %d", code)
	}

	w.start("b")
	w.waitState("b", scope.Up)
	testkit.Eventually(t, 90*time.Second, "b's Glance has the image with its data", func() error {
		code, im := w.direct("b", id)
		if code != http.StatusOK || im["status"] != "active" || im["checksum"] != sum {
			return fmt.Errorf("b: %d %v", code, im)
		}
		return nil
	})
	// Once: b holds one image of that name.
	var list struct {
		Images []map[string]any `json:"images"`
	}
	json.Unmarshal([]byte(get(t, w.glance["b"]+"/v2/images?name=away")), &list)
	if len(list.Images) != 1 {
		t.Fatalf("b holds %d images named away", len(list.Images))
	}
}
