package openstack

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
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/agent"
	"cheops/forward"
	"cheops/forward/glance"
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
	"ab":     "{glance: a & b}",
	"abc":    "{glance: a & b & c}",
	"c":      "{glance: c}",
	"aorb":   "{glance: a | b}",
	"athenb": "{glance: a ; b}",
	"bthena": "{glance: b ; a}",
}

// bodyLimit is the agents' --max-body in these tests, far below the
// images' sizes: image data that went through a buffered path (a body
// or an answer read whole) would be refused.
const bodyLimit = 1 << 20

// world is three Glance sites, each behind its own agent.
type world struct {
	t      testing.TB
	glance map[string]string // site → its Glance's URL
	agents map[string]*agent.Agent
	cfgs   map[string]agent.Config
	dir    string
	sites  string // the Glance sites' directory (glance-sites.sh start)
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
	return filepath.Join("..", "..", "contrib", "openstack", "glance-sites.sh")
}

// newWorld starts Glance sites a, b and c with contrib/openstack's
// script, and an agent in front of each.
func newWorld(t testing.TB) *world {
	requireOpenStack(t)
	w := &world{t: t, glance: map[string]string{}, agents: map[string]*agent.Agent{}, cfgs: map[string]agent.Config{}, dir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w.sites = filepath.Join(w.dir, "glance")
	start := exec.CommandContext(ctx, script(), "start", w.sites, "3", fmt.Sprint(freeBase(t, 3)))
	// On the deadline, end the script's group, glance-manage db_sync with
	// it (each Glance runs in a group of its own, which stop ends).
	testkit.OwnGroup(start)
	out, err := start.CombinedOutput()
	t.Cleanup(func() { exec.Command(script(), "stop", w.sites).Run() })
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
		cfg.MaxBody = bodyLimit
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
	w.waitAllUp()
	return w
}

// waitAllUp waits until every agent sees every other up.
func (w *world) waitAllUp() {
	w.t.Helper()
	testkit.Eventually(w.t, 30*time.Second, "sites up", func() error {
		for a, ag := range w.agents {
			if ag == nil {
				return fmt.Errorf("%s's agent is stopped", a)
			}
			for b := range w.agents {
				if st := ag.Node().View().Sites[b].State; a != b && st != scope.Up {
					return fmt.Errorf("%s sees %s %v", a, b, st)
				}
			}
		}
		return nil
	})
}

// waitCatalog waits until each site's catalog holds the image.
func (w *world) waitCatalog(id string, sites ...string) {
	w.t.Helper()
	for _, s := range sites {
		testkit.Eventually(w.t, 30*time.Second, s+"'s catalog holds the image", func() error {
			if _, ok := w.agents[s].Catalog().LookupLocal("glance", s, glance.Images+"/"+id); !ok {
				return fmt.Errorf("not yet")
			}
			return nil
		})
	}
}

// start starts a site's agent (again): it dials the agents running now
// (a restarted agent listens on a new port, so the others cannot dial
// it).
func (w *world) start(site string) {
	w.t.Helper()
	cfg := w.cfgs[site]
	for name, a := range w.agents {
		if a != nil && name != site {
			cfg.Node.Peers = append(slices.Clone(cfg.Node.Peers), a.Node().Addrs()[:1]...)
		}
	}
	a, err := agent.Start(context.Background(), cfg)
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

// stopGlance stops a site's Glance; its agent runs on.
func (w *world) stopGlance(site string) {
	w.t.Helper()
	if out, err := exec.Command(script(), "stop", w.sites, site).CombinedOutput(); err != nil {
		w.t.Fatalf("stop Glance %s: %v\n%s", site, err, out)
	}
	testkit.Eventually(w.t, 30*time.Second, "Glance "+site+" stopped", func() error {
		if resp, err := http.Get(w.glance[site] + "/v2/images"); err == nil {
			resp.Body.Close()
			return fmt.Errorf("it answers %d", resp.StatusCode)
		}
		return nil
	})
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

// writeImage writes n random bytes to name in the world's directory and
// returns their MD5 (Glance's checksum).
func (w *world) writeImage(name string, n int) string {
	w.t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(w.dir, name), data, 0o644); err != nil {
		w.t.Fatal(err)
	}
	return fmt.Sprintf("%x", md5.Sum(data))
}

// fileSum is the MD5 of a file in the world's directory.
func (w *world) fileSum(name string) string {
	w.t.Helper()
	f, err := os.Open(filepath.Join(w.dir, name))
	if err != nil {
		w.t.Fatal(err)
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		w.t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// create creates an image with the openstack CLI, its data from file (in
// the world's directory; none when ""), and returns its id.
func (w *world) create(endpoint, name, file string) string {
	w.t.Helper()
	args := []string{"image", "create", "--disk-format", "raw", "--container-format", "bare", name, "-f", "json"}
	if file != "" {
		args = append(args, "--file", file)
	}
	out := w.openstack(endpoint, args...)
	var created struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID == "" {
		w.t.Fatalf("image create: %v\n%s", err, out)
	}
	return created.ID
}

// waitActive waits until each site's Glance holds the image active with
// the checksum.
func (w *world) waitActive(id, sum string, sites ...string) {
	w.t.Helper()
	for _, s := range sites {
		testkit.Eventually(w.t, 60*time.Second, "image active on "+s, func() error {
			code, im := w.direct(s, id)
			if code != http.StatusOK || im["status"] != "active" || im["checksum"] != sum {
				return fmt.Errorf("%s: %d %v", s, code, im)
			}
			return nil
		})
	}
}

// download GETs url and returns the answer's status and headers and its
// body's MD5, read as it arrives.
func download(t testing.TB, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := md5.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, resp.Header, fmt.Sprintf("%x", h.Sum(nil))
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
	// With the cheops command, as an operator would.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, testkit.BuildBinary(t), "resource", "attach", rid, "c", "--agent", w.agents["a"].URL()).CombinedOutput(); err != nil {
		t.Fatalf("cheops resource attach %s c: %v\n%s", rid, err, out)
	}
	testkit.Eventually(t, 60*time.Second, "c's Glance holds the image with its data", func() error {
		code, im := w.direct("c", id)
		if code != http.StatusOK || im["status"] != "active" || im["checksum"] != sum || im["color"] != "blue" {
			return fmt.Errorf("c: %d %v", code, im)
		}
		return nil
	})
	// c's agent, without a scope, serves it from c's Glance.
	testkit.Eventually(t, 30*time.Second, "c's agent serves the image's data from c", func() error {
		code, h, got := download(t, w.agents["c"].URL()+"/svc/glance/v2/images/"+id+"/file")
		if code != http.StatusOK || got != sum || h.Get(forward.HeaderSite) != "c" {
			return fmt.Errorf("%d from %q, md5 %s", code, h.Get(forward.HeaderSite), got)
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

// A 64 MiB image, 64 times the agents' body limit, goes through the
// agents as a stream, never held whole: created with its data on a & b
// through a's agent with the openstack CLI, it is active on both with
// the file's checksum, and `image save` writes the same bytes through
// a's agent (a holder: from its Glance), b's with {glance: a | b} (a
// holder too) and c's (no copy: from a holder's, through the hop). The
// staging of an import, 3 times the body limit, reaches a's and b's
// staging areas through c's agent.
func TestOpenStackLargeImage(t *testing.T) {
	w := newWorld(t)
	sum := w.writeImage("big.raw", 64<<20+13)
	id := w.create(w.endpoint("a", "ab"), "big", "big.raw")
	w.waitActive(id, sum, "a", "b")
	for _, via := range []struct{ site, name string }{{"a", "ab"}, {"b", "aorb"}, {"c", "ab"}} {
		out := "saved-" + via.site + ".raw"
		w.openstack(w.endpoint(via.site, via.name), "image", "save", "--file", out, id)
		if got := w.fileSum(out); got != sum {
			t.Fatalf("image save through %s's agent with %s: md5 %s, want %s", via.site, names[via.name], got, sum)
		}
		os.Remove(filepath.Join(w.dir, out))
	}
	code, h, got := download(t, w.endpoint("c", "ab")+"/v2/images/"+id+"/file")
	if served := h.Get(forward.HeaderSite); code != http.StatusOK || got != sum || (served != "a" && served != "b") {
		t.Fatalf("GET the data through c: %d from %q, md5 %s", code, served, got)
	}

	// The staging of an import (PUT …/stage) is image data too: streamed
	// to every replica's staging area, through c's agent (relayed), never
	// read whole (3 times the body limit).
	// (Through the API: the CLI without --file uploads its stdin, empty.)
	resp, err := http.Post(w.endpoint("a", "ab")+"/v2/images", "application/json",
		strings.NewReader(`{"name": "staged", "disk_format": "raw", "container_format": "bare"}`))
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		ID string `json:"id"`
	}
	json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	staged := created.ID
	if resp.StatusCode != http.StatusCreated || staged == "" {
		t.Fatalf("create an image to stage: %d %v", resp.StatusCode, created)
	}
	w.waitCatalog(staged, "a", "b")
	stageSum := w.writeImage("stage.raw", 3*bodyLimit+17)
	f, err := os.Open(filepath.Join(w.dir, "stage.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	req, _ := http.NewRequest(http.MethodPut, w.endpoint("c", "ab")+"/v2/images/"+staged+"/stage", f)
	req.ContentLength = st.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(forward.HeaderSites) != "a=204, b=204" {
		t.Fatalf("PUT …/stage through c: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	for _, s := range []string{"a", "b"} {
		if code, im := w.direct(s, staged); code != http.StatusOK || im["status"] != "uploading" {
			t.Fatalf("%s after the staging: %d %v", s, code, im)
		}
		if got := w.fileSum(filepath.Join("glance", s, "staging", staged)); got != stageSum {
			t.Fatalf("%s's staging area holds md5 %s, want %s", s, got, stageSum)
		}
	}
	if _, err := os.Stat(filepath.Join(w.sites, "c", "staging", staged)); !os.IsNotExist(err) {
		t.Fatalf("c's staging area: %v", err)
	}
}

// Reads with '|' and ';': an image on a & b is read (its metadata and its
// data) with {glance: a | b}, {glance: a ; b} and {glance: b ; a}. ';'
// is served by the first holder of the scope's order that answers, '|'
// by the nearest: through a holder's agent (the catalog knows the image)
// 'a | b' is served by the agent's own Glance, 'a ; b' by a's even
// through b's agent and 'b ; a' by b's even through a's; through c's
// agent (no copy, no catalog entry) the scope places the read: a for
// 'a ; b', a or b for 'a | b'. With a's agent down, then with a's Glance
// down (its agent up), every read is served by b, with the same data,
// the read naming a in X-Cheops-Fallback when a's agent answered that
// its Glance could not.
func TestOpenStackReadAlternatives(t *testing.T) {
	w := newWorld(t)
	sum := w.writeImage("alt.raw", 2<<20+5)
	id := w.create(w.endpoint("a", "ab"), "alt", "alt.raw")
	w.waitActive(id, sum, "a", "b")

	w.waitCatalog(id, "a", "b")

	// read reads the image's metadata and data through site's agent with
	// a named scope and returns who served each and the sites the data
	// read fell back from.
	read := func(site, name string) (string, string, string) {
		t.Helper()
		base := w.endpoint(site, name) + "/v2/images/" + id
		resp, err := http.Get(base)
		if err != nil {
			t.Fatal(err)
		}
		var im map[string]any
		json.NewDecoder(resp.Body).Decode(&im)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || im["checksum"] != sum {
			t.Fatalf("GET the image through %s with %s: %d %v", site, names[name], resp.StatusCode, im)
		}
		code, h, got := download(t, base+"/file")
		if code != http.StatusOK || got != sum {
			t.Fatalf("GET the data through %s with %s: %d, md5 %s (fallback %q)", site, names[name], code, got, h.Get(forward.HeaderFallback))
		}
		var fell []string
		for _, part := range strings.Split(h.Get(forward.HeaderFallback), "; ") {
			if s, _, ok := strings.Cut(part, ": "); ok {
				fell = append(fell, s)
			}
		}
		return resp.Header.Get(forward.HeaderSite), h.Get(forward.HeaderSite), strings.Join(fell, " ")
	}
	type want struct {
		site, name string
		served     []string // any of them
		fellBack   []string // any of them ("": none)
	}
	check := func(phase string, cases []want) {
		t.Helper()
		for _, c := range cases {
			meta, data, fell := read(c.site, c.name)
			if !slices.Contains(c.served, meta) || !slices.Contains(c.served, data) || !slices.Contains(c.fellBack, fell) {
				t.Errorf("%s: through %s with %s: metadata served by %q, data by %q (want one of %q), the data read fell back from %q (want one of %q)",
					phase, c.site, names[c.name], meta, data, c.served, fell, c.fellBack)
			}
		}
	}
	none := []string{""}
	check("all up", []want{
		{"c", "athenb", []string{"a"}, none},
		{"c", "aorb", []string{"a", "b"}, none},
		{"a", "aorb", []string{"a"}, none},
		{"b", "aorb", []string{"b"}, none},
		{"a", "athenb", []string{"a"}, none},
		{"b", "athenb", []string{"a"}, none},
		{"a", "bthena", []string{"b"}, none},
		{"b", "bthena", []string{"b"}, none},
		{"c", "bthena", []string{"b"}, none},
	})
	w.openstack(w.endpoint("b", "athenb"), "image", "save", "--file", "saved-b.raw", id)
	if got := w.fileSum("saved-b.raw"); got != sum {
		t.Fatalf("image save through b with a ; b: md5 %s", got)
	}
	w.openstack(w.endpoint("c", "athenb"), "image", "save", "--file", "saved.raw", id)
	if got := w.fileSum("saved.raw"); got != sum {
		t.Fatalf("image save through c with a ; b: md5 %s", got)
	}

	w.stop("a")
	w.waitState("a", scope.Down)
	check("a's agent down", []want{
		{"c", "athenb", []string{"b"}, none},
		{"c", "aorb", []string{"b"}, none},
		{"b", "aorb", []string{"b"}, none},
		{"b", "athenb", []string{"b"}, none},
	})

	w.start("a")
	w.waitAllUp()
	w.stopGlance("a")
	check("a's Glance down, its agent up", []want{
		{"c", "athenb", []string{"b"}, []string{"a"}},
		{"c", "aorb", []string{"b"}, []string{"", "a"}},
		{"a", "aorb", []string{"b"}, []string{"a"}},
		{"a", "athenb", []string{"b"}, []string{"a"}},
		{"b", "athenb", []string{"b"}, []string{"a"}},
		{"b", "aorb", []string{"b"}, none},
	})
	w.openstack(w.endpoint("a", "athenb"), "image", "save", "--file", "saved-a.raw", id)
	if got := w.fileSum("saved-a.raw"); got != sum {
		t.Fatalf("image save through a with a ; b, a's Glance down: md5 %s", got)
	}
}
