package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cheops/agent"
	"cheops/internal/testkit"
)

// countingApp is a tiny REST application that counts the requests it
// receives: a POST creates an item, anything else lists none.
func countingApp(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := n.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"id": %d}`, k)
			return
		}
		fmt.Fprint(w, `[]`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

// healthOf reads an agent's GET /v1/health.
func healthOf(api string) (agent.HealthJSON, error) {
	var h agent.HealthJSON
	resp, err := http.Get(api + "/v1/health")
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// stop interrupts an agent process and waits for it to exit.
func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	if !p.end(os.Interrupt, 15*time.Second) {
		t.Fatalf("agent %s did not stop on SIGINT", p.data)
	}
}

// permutations lists every order of sites.
func permutations(sites []string) [][]string {
	if len(sites) <= 1 {
		return [][]string{sites}
	}
	var out [][]string
	for i, s := range sites {
		rest := append(append([]string{}, sites[:i]...), sites[i+1:]...)
		for _, p := range permutations(rest) {
			out = append(out, append([]string{s}, p...))
		}
	}
	return out
}

// An impostor — a trusted peer started with --site paris — never gets a
// request scoped to paris: the sites stop and start again in every order
// while it runs, berlin knowing paris from its trust file (NAME PEERID)
// and rome from the first claim it persisted (a bare peer id, the old
// format). Every site refuses the impostor's claim, counts it and lists
// it in /v1/health.
func TestImpostorNeverServesParis(t *testing.T) {
	dir := t.TempDir()
	sites := []string{"paris", "berlin", "rome"}
	data, ids, apps, counts, listen := map[string]string{}, map[string]string{}, map[string]string{}, map[string]*atomic.Int64{}, map[string]string{}
	for _, s := range append(sites, "impostor") {
		data[s] = filepath.Join(dir, s)
		ids[s] = peerID(t, data[s])
		apps[s], counts[s] = countingApp(t)
		listen[s] = "/ip4/127.0.0.1/tcp/" + testkit.FreePort(t)
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// berlin binds every name; rome trusts bare peer ids; paris trusts
	// the impostor too (every site does: it is a trusted peer).
	named := write("trust-named", fmt.Sprintf("# sites\nparis %s\nberlin %s\nrome %s\n%s  # trusted, no name\n",
		ids["paris"], ids["berlin"], ids["rome"], ids["impostor"]))
	bare := write("trust-bare", strings.Join([]string{ids["paris"], ids["berlin"], ids["rome"], ids["impostor"]}, "\n")+"\n")
	trustFile := map[string]string{"paris": named, "berlin": named, "rome": bare, "impostor": bare}
	args := func(s string) []string {
		a := []string{"--trust-file", trustFile[s], "--listen", listen[s], "--service", "posts=" + apps[s]}
		for _, o := range sites {
			if o != s {
				a = append(a, "--peer", listen[o]+"/p2p/"+ids[o])
			}
		}
		return a
	}
	running := map[string]*agentProc{}
	start := func(s string) {
		name := s
		if s == "impostor" {
			name = "paris"
		}
		running[s] = startAgent(t, name, data[s], args(s)...)
	}
	allUp := func() {
		t.Helper()
		testkit.Eventually(t, 30*time.Second, "every site sees the real sites up", func() error {
			for _, s := range sites {
				got, err := sitesOf(t, running[s])
				if err != nil {
					return err
				}
				for _, o := range sites {
					if got[o].State != "up" || got[o].Peer != ids[o] {
						return fmt.Errorf("%s sees %s as %+v", s, o, got[o])
					}
				}
			}
			return nil
		})
	}
	for _, s := range sites {
		start(s)
	}
	allUp() // rome has bound paris by first claim
	start("impostor")

	// send posts through a site with {posts: paris}; what it answers
	// depends on whether paris is up, but never involves the impostor.
	send := func(via string) int {
		req, _ := http.NewRequest("POST", running[via].api+"/svc/posts/posts", strings.NewReader(`{"title": "for paris"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Cheops-Scope", "{posts: paris}")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST through %s: %v", via, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	refuses := func(s string) func() error {
		return func() error {
			h, err := healthOf(running[s].api)
			if err != nil {
				return err
			}
			for _, c := range h.Conflicts {
				if c.Site == "paris" && c.Claimant == ids["impostor"] && c.Count > 0 {
					if h.Status != "conflict" {
						return fmt.Errorf("%s: status %q with a conflict", s, h.Status)
					}
					return nil
				}
			}
			return fmt.Errorf("%s lists no refused claim of the impostor: %+v", s, h)
		}
	}
	check := func(when string) {
		t.Helper()
		if n := counts["impostor"].Load(); n != 0 {
			t.Fatalf("%s: the impostor's application received %d requests", when, n)
		}
		for s, p := range running {
			if s == "impostor" {
				continue
			}
			got, err := sitesOf(t, p)
			if err != nil {
				t.Fatal(err)
			}
			if row, ok := got["paris"]; ok && row.Peer != ids["paris"] {
				t.Fatalf("%s: %s lists paris as %+v", when, s, row)
			}
		}
	}
	for _, s := range sites {
		testkit.Eventually(t, 30*time.Second, s+" refuses the impostor", refuses(s))
	}
	for i, order := range permutations(sites) {
		for _, s := range sites {
			running[s].stop(t)
			delete(running, s)
		}
		for _, s := range order {
			start(s)
			testkit.Eventually(t, 30*time.Second, s+" refuses the impostor after its restart", refuses(s))
			for via := range running {
				if via != "impostor" {
					send(via)
				}
			}
			check(fmt.Sprintf("order %d %v, %s started", i, order, s))
		}
		allUp()
		before := counts["paris"].Load()
		for _, via := range sites {
			if code := send(via); code != http.StatusCreated {
				t.Fatalf("order %v: POST {posts: paris} through %s: %d", order, via, code)
			}
		}
		if got := counts["paris"].Load() - before; got != 3 {
			t.Fatalf("order %v: paris' application received %d of 3 creates", order, got)
		}
		check(fmt.Sprintf("order %d %v, all up", i, order))
	}
	// The refusals are counted in the metrics.
	resp, err := http.Get(running["rome"].api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `cheops_membership_refused_claims_total{site="paris"}`) {
		t.Fatal("no cheops_membership_refused_claims_total for paris in rome's metrics")
	}
	// rome's binding is the persisted first claim, berlin's the trust file.
	for s, want := range map[string]string{"rome": "first-claim", "berlin": "config"} {
		got, err := sitesOf(t, running[s])
		if err != nil || got["paris"].Binding != want {
			t.Fatalf("%s binds paris by %q (%v), want %s", s, got["paris"].Binding, err, want)
		}
	}
	// An impostor given berlin's trust file does not even start.
	running["impostor"].stop(t)
	cmd := exec.Command(testkit.BuildBinary(t), append([]string{"agent", "--site", "paris", "--data", data["impostor"], "--api", "127.0.0.1:0"},
		"--trust-file", named, "--listen", "/ip4/127.0.0.1/tcp/0")...)
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != exitBadUsage || !strings.Contains(string(out), "another site's name") {
		t.Fatalf("impostor with the named trust file: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}
}

// `cheops sites forget NAME` removes a first-claim binding and nothing
// else: an unbound name, this site's own and a name of the trust
// configuration are refused with their codes.
func TestSitesForget(t *testing.T) {
	dir := t.TempDir()
	parisData, berlinData := filepath.Join(dir, "paris"), filepath.Join(dir, "berlin")
	parisID, berlinID, romeID := peerID(t, parisData), peerID(t, berlinData), peerID(t, filepath.Join(dir, "rome"))
	paris := startAgent(t, "paris", parisData, "--trust", berlinID)
	berlin := startAgent(t, "berlin", berlinData, "--trust", parisID, "--trust", "rome="+romeID, "--peer", paris.addr(t))
	testkit.Eventually(t, 30*time.Second, "berlin binds paris", func() error {
		sites, err := sitesOf(t, berlin)
		if err != nil {
			return err
		}
		if p := sites["paris"]; p.Peer != parisID || p.Binding != "first-claim" {
			return fmt.Errorf("paris row %+v", p)
		}
		return nil
	})
	for _, tc := range []struct {
		site, code string
	}{{"oslo", "unknown_site"}, {"berlin", "bad_input"}, {"rome", "bound_by_config"}, {"9x", "bad_input"}} {
		cmd := exec.Command(testkit.BuildBinary(t), "sites", "forget", tc.site, "--agent", berlin.api)
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != exitBadUsage || !strings.Contains(string(out), tc.code) {
			t.Errorf("forget %s: exit %d, %s; want 2 and %s", tc.site, cmd.ProcessState.ExitCode(), out, tc.code)
		}
	}
	out, err := exec.Command(testkit.BuildBinary(t), "sites", "forget", "paris", "--json", "--agent", berlin.api).Output()
	var b agent.BindingJSON
	if err != nil || json.Unmarshal(out, &b) != nil || b.Peer != parisID || b.Source != "first-claim" {
		t.Fatalf("forget paris: %v %s", err, out)
	}
}
