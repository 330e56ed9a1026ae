package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cheops/agent"
	"cheops/internal/testkit"
	"cheops/node"
)

// sitesOf runs `cheops sites --json` against an agent.
func sitesOf(t *testing.T, p *agentProc) (map[string]agent.SiteJSON, error) {
	out, err := exec.Command(testkit.BuildBinary(t), "sites", "--json", "--agent", p.api).Output()
	if err != nil {
		return nil, fmt.Errorf("cheops sites: %v", err)
	}
	var list []agent.SiteJSON
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, err
	}
	m := map[string]agent.SiteJSON{}
	for _, s := range list {
		m[s.Site] = s
	}
	return m, nil
}

func sitesIn(t *testing.T, p *agentProc, want map[string]string) func() error {
	return func() error {
		sites, err := sitesOf(t, p)
		if err != nil {
			return err
		}
		for site, state := range want {
			if sites[site].State != state {
				return fmt.Errorf("%s: %s is %q, want %q (%+v)", p.api, site, sites[site].State, state, sites)
			}
		}
		return nil
	}
}

// A site that crashes is marked down within the configured bound, restarts
// with the same identity (the kernel released its lock), and a clean stop
// exits 0 and removes the files scripts wait for.
func TestAgentCrashRestartStop(t *testing.T) {
	dir := t.TempDir()
	parisData, berlinData := filepath.Join(dir, "paris"), filepath.Join(dir, "berlin")
	parisID, berlinID := peerID(t, parisData), peerID(t, berlinData)
	paris := startAgent(t, "paris", parisData, "--trust", berlinID)
	berlin := startAgent(t, "berlin", berlinData, "--trust", parisID, "--peer", paris.addr(t))
	testkit.Eventually(t, 30*time.Second, "both up", sitesIn(t, paris, map[string]string{"paris": "up", "berlin": "up"}))

	// A second agent on berlin's data directory is refused.
	second := exec.Command(testkit.BuildBinary(t), "agent", "--site", "berlin2", "--data", berlinData, "--trust-all",
		"--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0")
	if out, _ := second.CombinedOutput(); second.ProcessState.ExitCode() != exitBadUsage || !strings.Contains(string(out), "in use") {
		t.Fatalf("second agent on one data directory: exit %d, %s", second.ProcessState.ExitCode(), out)
	}
	// `cheops id` reads the identity of a running agent.
	if got := peerID(t, berlinData); got != berlinID {
		t.Fatalf("id while running: %s, want %s", got, berlinID)
	}

	berlin.end(os.Kill, time.Minute)
	// --probe-interval 200ms, --probe-timeout 1s, down after 4 misses.
	cfg := node.DefaultConfig()
	cfg.ProbeInterval, cfg.ProbeTimeout = 200*time.Millisecond, time.Second
	testkit.Eventually(t, cfg.DownBound()+3*time.Second, "crashed berlin down at paris", sitesIn(t, paris, map[string]string{"berlin": "down"}))

	berlin = startAgent(t, "berlin", berlinData, "--trust", parisID, "--peer", paris.addr(t))
	testkit.Eventually(t, 30*time.Second, "berlin up again", sitesIn(t, paris, map[string]string{"berlin": "up"}))
	sites, err := sitesOf(t, berlin)
	if err != nil || sites["berlin"].Peer != berlinID || !sites["berlin"].Self {
		t.Fatalf("restarted berlin: %+v %v, want peer %s", sites, err, berlinID)
	}

	if err := berlin.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited, err := berlin.waitExit(20 * time.Second)
	if !exited {
		t.Fatal("berlin did not stop on SIGTERM")
	}
	if err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, berlin.stderr.String())
	}
	for _, f := range []string{agent.AddrsFile, agent.APIFile, "lock"} {
		if _, err := os.Stat(filepath.Join(berlinData, f)); f != "lock" && !os.IsNotExist(err) {
			t.Errorf("%s left after a clean stop", f)
		}
	}
	if !strings.Contains(berlin.stderr.String(), "/p2p/"+berlinID) {
		t.Errorf("berlin did not print its addresses:\n%s", berlin.stderr.String())
	}
}

// Two agents given one site name: the first claim stands everywhere it was
// learned first, and the conflict is reported in `cheops sites`.
func TestAgentDuplicateSiteName(t *testing.T) {
	dir := t.TempDir()
	parisData, berlinData, twinData := filepath.Join(dir, "paris"), filepath.Join(dir, "berlin"), filepath.Join(dir, "twin")
	parisID, berlinID, twinID := peerID(t, parisData), peerID(t, berlinData), peerID(t, twinData)
	paris := startAgent(t, "paris", parisData, "--trust", berlinID)
	berlin := startAgent(t, "berlin", berlinData, "--trust", parisID, "--trust", twinID, "--peer", paris.addr(t))
	testkit.Eventually(t, 30*time.Second, "paris up at berlin", sitesIn(t, berlin, map[string]string{"paris": "up"}))

	startAgent(t, "paris", twinData, "--trust", berlinID, "--peer", berlin.addr(t))
	testkit.Eventually(t, 30*time.Second, "conflict at berlin", func() error {
		sites, err := sitesOf(t, berlin)
		if err != nil {
			return err
		}
		p := sites["paris"]
		if p.Peer != parisID || len(p.Conflicts) != 1 || p.Conflicts[0] != twinID {
			return fmt.Errorf("paris row %+v", p)
		}
		return nil
	})
	cmd := exec.Command(testkit.BuildBinary(t), "sites", "--agent", berlin.api)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "CONFLICT") || !strings.Contains(stderr.String(), twinID) {
		t.Fatalf("table does not show the conflict:\n%s\n%s", stdout.String(), stderr.String())
	}
}

func TestIDCommand(t *testing.T) {
	data := filepath.Join(t.TempDir(), "site")
	a, b := peerID(t, data), peerID(t, data)
	if a != b || !strings.HasPrefix(a, "12D3KooW") {
		t.Fatalf("ids %q, %q", a, b)
	}
	fi, err := os.Stat(filepath.Join(data, node.IdentityFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v %v", fi, err)
	}
}

func TestSitesWithoutAgent(t *testing.T) {
	cmd := exec.Command(testkit.BuildBinary(t), "sites", "--agent", "http://127.0.0.1:1")
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != exitFailed || !strings.Contains(string(out), "no agent at http://127.0.0.1:1") {
		t.Fatalf("exit %d: %s", cmd.ProcessState.ExitCode(), out)
	}
}

// An agent whose --listen or --api address is taken refuses to start, with
// the address and the system's reason, and exits 1.
func TestAgentAddressTaken(t *testing.T) {
	dir := t.TempDir()
	first := filepath.Join(dir, "first")
	port := testkit.FreePort(t)
	listen := []string{"--listen", "/ip4/127.0.0.1/tcp/" + port, "--listen", "/ip4/127.0.0.1/udp/" + port + "/quic-v1"}
	a := startAgent(t, "paris", first, append([]string{"--trust-all"}, listen...)...)
	api := strings.TrimPrefix(a.api, "http://")
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"listen taken": {append([]string{"--api", "127.0.0.1:0"}, listen...), "/ip4/127.0.0.1/tcp/" + port},
		"api taken":    {[]string{"--api", api, "--listen", "/ip4/127.0.0.1/tcp/0"}, api},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, testkit.BuildBinary(t), append([]string{"agent", "--site", "berlin", "--data", filepath.Join(dir, "second"), "--trust-all"}, tc.args...)...)
		out, _ := cmd.CombinedOutput()
		cancel()
		if code := cmd.ProcessState.ExitCode(); code != exitFailed || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "address already in use") {
			t.Errorf("%s: exit %d, want 1 naming %s and the reason:\n%s", name, code, tc.want, out)
		}
	}
}
