package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cheops/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// requirements skips the test unless CHEOPS_FAULTS=1 asks for the
// real-partition suite (`make e2e`); asked for, it fails without root or a
// program it needs (testkit.Missing).
func requirements(t *testing.T) {
	t.Helper()
	if os.Getenv("CHEOPS_FAULTS") == "" {
		t.Skip("real-partition tests run with `make e2e` (CHEOPS_FAULTS=1)")
	}
	testkit.Require(t, os.Geteuid() == 0, "network namespaces need root")
	testkit.Tool(t, "apt-get install iproute2", "ip")
	testkit.Tool(t, "apt-get install nftables", "nft")
	testkit.Tool(t, testkit.JSONServer, "json-server")
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// node is one site: a namespace, its address, an agent and json-server.
type node struct {
	name, ns, ip, dir string
	peerID            string
	agent, app        *exec.Cmd
	stderr            *testkit.Buffer
}

func (n *node) api() string  { return "http://" + n.ip + ":7070" }
func (n *node) addr() string { return "/ip4/" + n.ip + "/tcp/4001/p2p/" + n.peerID }

// network is a set of site namespaces on one bridge.
type network struct {
	t      *testing.T
	bridge string
	subnet string // "10.77.N"
	nodes  map[string]*node
	order  []string
	cuts   int
}

var netSeq int

// newNetwork creates one namespace per site, cleaned up however the test
// ends.
func newNetwork(t *testing.T, names ...string) *network {
	requirements(t)
	netSeq++
	id := fmt.Sprintf("%d%d", os.Getpid()%1000, netSeq)
	nw := &network{t: t, bridge: "chbr" + id, subnet: fmt.Sprintf("10.77.%d", (os.Getpid()+netSeq)%250), nodes: map[string]*node{}}
	// The nodes' directory before the cleanup that ends their processes:
	// cleanups run last first, so the processes have exited when the
	// directory is removed.
	base := t.TempDir()
	t.Cleanup(nw.destroy)
	sh(t, "ip", "link", "add", nw.bridge, "type", "bridge")
	sh(t, "ip", "addr", "add", nw.subnet+".254/24", "dev", nw.bridge)
	sh(t, "ip", "link", "set", nw.bridge, "up")
	for i, name := range names {
		n := &node{name: name, ns: "ch" + id + "-" + name, ip: fmt.Sprintf("%s.%d", nw.subnet, i+1), dir: filepath.Join(base, name)}
		nw.nodes[name] = n
		nw.order = append(nw.order, name)
		host, peer := fmt.Sprintf("vh%s%d", id, i), fmt.Sprintf("vp%s%d", id, i)
		sh(t, "ip", "netns", "add", n.ns)
		sh(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
		sh(t, "ip", "link", "set", peer, "netns", n.ns)
		sh(t, "ip", "link", "set", host, "master", nw.bridge, "up")
		sh(t, "ip", "netns", "exec", n.ns, "ip", "addr", "add", n.ip+"/24", "dev", peer)
		sh(t, "ip", "netns", "exec", n.ns, "ip", "link", "set", peer, "up")
		sh(t, "ip", "netns", "exec", n.ns, "ip", "link", "set", "lo", "up")
		sh(t, "ip", "netns", "exec", n.ns, "nft", "add table inet cheops; add chain inet cheops in { type filter hook input priority 0; }; add chain inet cheops out { type filter hook output priority 0; }")
		out, err := exec.Command(testkit.BuildBinary(t), "id", "--data", n.dir).Output()
		if err != nil {
			t.Fatal(err)
		}
		n.peerID = strings.TrimSpace(string(out))
	}
	return nw
}

func (nw *network) destroy() {
	for _, n := range nw.nodes {
		for _, c := range []*exec.Cmd{n.agent, n.app} {
			if c != nil && c.Process != nil {
				c.Process.Kill()
				c.Wait()
			}
		}
		exec.Command("ip", "netns", "del", n.ns).Run()
	}
	exec.Command("ip", "link", "del", nw.bridge).Run()
	if nw.t.Failed() {
		for _, n := range nw.nodes {
			if n.stderr != nil {
				nw.t.Logf("%s agent log (tail):\n%s", n.name, tail(n.stderr.String(), 3000))
			}
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// startApp runs json-server on the namespace's loopback.
func (nw *network) startApp(name string) {
	n := nw.nodes[name]
	db := filepath.Join(n.dir, "db.json")
	os.MkdirAll(n.dir, 0o700)
	if _, err := os.Stat(db); err != nil {
		os.WriteFile(db, []byte(`{"posts": []}`), 0o644)
	}
	n.app = exec.Command("ip", "netns", "exec", n.ns, "json-server", "--host", "127.0.0.1", "--port", "3000", "--quiet", db)
	if err := n.app.Start(); err != nil {
		nw.t.Fatal(err)
	}
}

// startAgent runs the built agent in the site's namespace, trusting the
// other sites (or, with trusted empty, everyone listed by the caller).
func (nw *network) startAgent(name string, extra ...string) {
	n := nw.nodes[name]
	args := []string{"netns", "exec", n.ns, testkit.BuildBinary(nw.t), "agent", "--site", name, "--data", n.dir,
		"--listen", "/ip4/" + n.ip + "/tcp/4001", "--api", n.ip + ":7070",
		"--service", "posts=http://127.0.0.1:3000",
		"--probe-interval", "300ms", "--probe-timeout", "1s", "--log-level", "warn",
		// Tests assert which sites answered: 1 s keeps a slow machine
		// from reporting an up site pending (default max(50 ms, 4 RTT)).
		"--replica-wait", "1s"}
	for _, other := range nw.order {
		if other != name {
			args = append(args, "--trust", nw.nodes[other].peerID)
		}
	}
	if name != nw.order[0] {
		args = append(args, "--peer", nw.nodes[nw.order[0]].addr())
	}
	args = append(args, extra...)
	n.stderr = &testkit.Buffer{}
	n.agent = exec.Command("ip", args...)
	n.agent.Stderr = n.stderr
	if err := n.agent.Start(); err != nil {
		nw.t.Fatal(err)
	}
	testkit.Eventually(nw.t, 60*time.Second, name+"'s API answers", func() error {
		_, err := nw.get(name, "/v1/health")
		return err
	})
}

// start brings up every site and waits until all see each other up.
func (nw *network) start() {
	for _, name := range nw.order {
		nw.startApp(name)
	}
	for _, name := range nw.order {
		nw.startAgent(name)
	}
	nw.waitStates(nw.order, nw.order, "up")
	// json-server takes a moment to load: a test must not start against
	// an application that refuses connections.
	for _, name := range nw.order {
		testkit.Eventually(nw.t, 60*time.Second, name+"'s application answers", func() error {
			if code, _, body := nw.do(name, "GET", "/svc/posts/posts", "{posts: "+name+"}", nil); code != 200 {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
	}
}

// cut drops traffic from a to b (and b to a when both) inside the
// namespaces, with nftables.
func (nw *network) cut(a, b string, both bool) {
	na, nb := nw.nodes[a], nw.nodes[b]
	sh(nw.t, "ip", "netns", "exec", na.ns, "nft", "add rule inet cheops out ip daddr "+nb.ip+" drop")
	sh(nw.t, "ip", "netns", "exec", nb.ns, "nft", "add rule inet cheops in ip saddr "+na.ip+" drop")
	if both {
		sh(nw.t, "ip", "netns", "exec", nb.ns, "nft", "add rule inet cheops out ip daddr "+na.ip+" drop")
		sh(nw.t, "ip", "netns", "exec", na.ns, "nft", "add rule inet cheops in ip saddr "+nb.ip+" drop")
	}
	nw.cuts++
}

// heal removes every cut.
func (nw *network) heal() {
	for _, n := range nw.nodes {
		sh(nw.t, "ip", "netns", "exec", n.ns, "nft", "flush chain inet cheops in; flush chain inet cheops out")
	}
}

func (nw *network) get(site, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", nw.nodes[site].api()+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return body, fmt.Errorf("GET %s at %s: %d %s", path, site, resp.StatusCode, body)
	}
	return body, nil
}

// do sends a request to a site's agent.
func (nw *network) do(site, method, path, scope string, body any) (int, http.Header, []byte) {
	nw.t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, nw.nodes[site].api()+path, rd)
	req.Header.Set("Content-Type", "application/json")
	if scope != "" {
		req.Header.Set("X-Cheops-Scope", scope)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		nw.t.Fatalf("%s %s at %s: %v", method, path, site, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, data
}

// posts reads a site's application straight, inside its namespace.
func (nw *network) posts(site string) []map[string]any {
	nw.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", nw.nodes[site].ns, testkit.BuildBinary(nw.t), "request", "--agent", nw.nodes[site].api(), "GET", "/svc/posts/posts", "--scope", site).Output()
	if err != nil {
		nw.t.Fatalf("read %s's posts: %v", site, err)
	}
	var items []map[string]any
	if err := json.Unmarshal(out, &items); err != nil {
		nw.t.Fatalf("%s's posts: %v: %s", site, err, out)
	}
	return items
}

func (nw *network) waitStates(observers, subjects []string, state string) {
	nw.t.Helper()
	testkit.Eventually(nw.t, 60*time.Second, "sites "+state, func() error {
		for _, o := range observers {
			body, err := nw.get(o, "/v1/sites")
			if err != nil {
				return err
			}
			var sites []struct{ Site, State string }
			json.Unmarshal(body, &sites)
			states := map[string]string{}
			for _, s := range sites {
				states[s.Site] = s.State
			}
			for _, s := range subjects {
				if s != o && states[s] != state {
					return fmt.Errorf("%s sees %s %q, want %s", o, s, states[s], state)
				}
			}
		}
		return nil
	})
}

// settled waits until no site of the resource owes anything, as seen
// from every listed site.
func (nw *network) settled(gid string, sites ...string) map[string]any {
	nw.t.Helper()
	var res map[string]any
	testkit.Eventually(nw.t, 90*time.Second, "nothing pending for "+gid, func() error {
		for _, s := range sites {
			body, err := nw.get(s, "/v1/resources/"+gid)
			if err != nil {
				return err
			}
			res = map[string]any{}
			json.Unmarshal(body, &res)
			for site, v := range res["sites"].(map[string]any) {
				if p, ok := v.(map[string]any)["pending"]; ok && len(p.([]any)) > 0 {
					return fmt.Errorf("%s sees %s owing %v", s, site, p)
				}
			}
		}
		return nil
	})
	return res
}
