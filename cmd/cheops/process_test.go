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
	"testing"
	"time"

	"cheops/agent"
	"cheops/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// agentProc is an agent process started from the built binary.
type agentProc struct {
	cmd    *exec.Cmd
	api    string
	data   string
	stderr *testkit.Buffer
	// exited is closed once the process has exited and waitErr is set:
	// one goroutine waits for it (two calls of cmd.Wait on a running
	// process, a test's and the cleanup's, could block forever).
	exited  chan struct{}
	waitErr error
}

// waitExit waits up to timeout for the process to exit; it reports
// whether it did, and cmd.Wait's error.
func (p *agentProc) waitExit(timeout time.Duration) (exited bool, err error) {
	select {
	case <-p.exited:
		return true, p.waitErr
	case <-time.After(timeout):
		return false, nil
	}
}

// end signals the process and waits for it to exit, killing it after
// timeout; it reports whether it exited before that.
func (p *agentProc) end(sig os.Signal, timeout time.Duration) bool {
	p.cmd.Process.Signal(sig)
	if exited, _ := p.waitExit(timeout); exited {
		return true
	}
	p.cmd.Process.Kill()
	<-p.exited
	return false
}

// startAgent starts an agent process with fast probes and waits until it
// has written its API URL (port 0: no race for a free port).
func startAgent(t *testing.T, site, data string, args ...string) *agentProc {
	t.Helper()
	argv := append([]string{"agent", "--site", site, "--data", data, "--api", "127.0.0.1:0",
		"--listen", "/ip4/127.0.0.1/tcp/0", "--probe-interval", "200ms", "--probe-timeout", "1s"}, args...)
	// A crashed agent leaves its files behind: wait for fresh ones.
	os.Remove(filepath.Join(data, agent.APIFile))
	os.Remove(filepath.Join(data, agent.AddrsFile))
	cmd := exec.Command(testkit.BuildBinary(t), argv...)
	stderr := &testkit.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, data: data, stderr: stderr, exited: make(chan struct{})}
	go func() { p.waitErr = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.end(os.Interrupt, 10*time.Second)
		if t.Failed() {
			t.Logf("%s stderr:\n%s", site, stderr.String())
		}
	})
	// The API file is written last, after the addresses.
	testkit.Eventually(t, 30*time.Second, site+" writes its API URL", func() error {
		data, err := os.ReadFile(filepath.Join(data, agent.APIFile))
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			return fmt.Errorf("no %s yet", agent.APIFile)
		}
		p.api = strings.TrimSpace(string(data))
		return nil
	})
	return p
}

func (p *agentProc) addr(t *testing.T) string {
	data, err := os.ReadFile(filepath.Join(p.data, agent.AddrsFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(data))[0]
}

func peerID(t *testing.T, data string) string {
	out, err := exec.Command(testkit.BuildBinary(t), "id", "--data", data).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestAgentProcessesFindEachOther(t *testing.T) {
	dir := t.TempDir()
	parisData, berlinData := filepath.Join(dir, "paris"), filepath.Join(dir, "berlin")
	parisID, berlinID := peerID(t, parisData), peerID(t, berlinData)

	// paris reads its settings from a config file; berlin from flags.
	conf := filepath.Join(dir, "paris.json")
	trustFile := filepath.Join(dir, "trust")
	os.WriteFile(trustFile, []byte("# the sites\n"+berlinID+"\n\n"), 0o600)
	os.WriteFile(conf, []byte(fmt.Sprintf(`{"site": "paris", "trust-file": %q}`, trustFile)), 0o600)
	paris := startAgent(t, "paris", parisData, "--config", conf)
	berlin := startAgent(t, "berlin", berlinData, "--trust", parisID, "--peer", paris.addr(t))

	testkit.Eventually(t, 30*time.Second, "cheops sites lists both up", func() error {
		for _, p := range []*agentProc{paris, berlin} {
			out, err := exec.Command(testkit.BuildBinary(t), "sites", "--json", "--agent", p.api).Output()
			if err != nil {
				return fmt.Errorf("sites: %v", err)
			}
			var sites []agent.SiteJSON
			if err := json.Unmarshal(out, &sites); err != nil {
				return err
			}
			up := map[string]bool{}
			for _, s := range sites {
				up[s.Site] = s.State == "up"
			}
			if len(sites) != 2 || !up["paris"] || !up["berlin"] {
				return fmt.Errorf("%s lists %+v", p.api, sites)
			}
		}
		return nil
	})
	out, err := exec.Command(testkit.BuildBinary(t), "catalog", "ls", "--json", "--agent", paris.api).Output()
	if err != nil || strings.TrimSpace(string(out)) != "[]" {
		t.Fatalf("catalog ls on an empty catalog: %v %q", err, out)
	}
	get := exec.Command(testkit.BuildBinary(t), "catalog", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--agent", paris.api)
	if msg, _ := get.CombinedOutput(); get.ProcessState.ExitCode() != exitFailed || !strings.Contains(string(msg), "no resource") {
		t.Fatalf("catalog get of an unknown id: exit %d, %s", get.ProcessState.ExitCode(), msg)
	}
	out, err = exec.Command(testkit.BuildBinary(t), "sites", "--agent", berlin.api).Output()
	if err != nil || !strings.Contains(string(out), "paris") || !strings.Contains(string(out), "berlin (self)") {
		t.Fatalf("sites table: %v\n%s", err, out)
	}
}

func TestAgentBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	aFile := write("file", "")
	// A data directory under a regular file cannot be created, even by root.
	unusable := filepath.Join(aFile, "x")
	corrupt := filepath.Join(dir, "corrupt")
	os.MkdirAll(corrupt, 0o700)
	write("corrupt/identity.key", "not a key")
	someID, otherID := peerID(t, filepath.Join(dir, "other")), peerID(t, filepath.Join(dir, "another"))
	ok := []string{"--site", "a", "--data", filepath.Join(dir, "a"), "--trust-all"}
	for name, tc := range map[string]struct {
		args []string
		want string // in the message
	}{
		"unknown flag":         {[]string{"agent", "--site", "a", "--data", dir, "--frobnicate"}, "frobnicate"},
		"missing site":         {[]string{"agent", "--data", dir, "--trust-all"}, "--site is required"},
		"missing data":         {[]string{"agent", "--site", "a", "--trust-all"}, "--data is required"},
		"bad site name":        {[]string{"agent", "--site", "9a", "--data", dir, "--trust-all"}, "site name"},
		"malformed peer":       {append([]string{"agent", "--peer", "/ip4/1.2.3.4/tcp"}, ok...), "peer address"},
		"peer without /p2p/":   {append([]string{"agent", "--peer", "/ip4/1.2.3.4/tcp/4001"}, ok...), "peer address"},
		"malformed listen":     {append([]string{"agent", "--listen", "/ip4/1.2.3/tcp/1"}, ok...), "address"},
		"bad trust":            {[]string{"agent", "--site", "a", "--data", dir, "--trust", "nobody"}, "not a peer id"},
		"bad trust file line":  {[]string{"agent", "--site", "a", "--data", dir, "--trust-file", write("trust", someID+"\nnobody # x\n")}, "trust:2"},
		"missing trust file":   {[]string{"agent", "--site", "a", "--data", dir, "--trust-file", filepath.Join(dir, "none")}, "--trust-file"},
		"bad trust name":       {[]string{"agent", "--site", "a", "--data", dir, "--trust", "9b=" + someID}, "site name"},
		"trust file 3 fields":  {[]string{"agent", "--site", "a", "--data", dir, "--trust-file", write("trust3", "b "+someID+" extra\n")}, "trust3:1"},
		"name bound twice":     {[]string{"agent", "--site", "a", "--data", dir, "--trust", "b=" + someID, "--trust-file", write("trust4", "b "+otherID+"\n")}, "bound to two peers"},
		"peer bound twice":     {[]string{"agent", "--site", "a", "--data", dir, "--trust", "b=" + someID, "--trust", "c=" + someID}, "bound to two sites"},
		"no trust":             {[]string{"agent", "--site", "a", "--data", dir}, "no trusted peers"},
		"unusable data":        {[]string{"agent", "--site", "a", "--data", unusable, "--trust-all"}, "--data"},
		"corrupt identity":     {[]string{"agent", "--site", "a", "--data", corrupt, "--trust-all"}, "identity"},
		"bad swarm key":        {append([]string{"agent", "--swarm-key", write("key", "garbage")}, ok...), "swarm key"},
		"swarm key, QUIC only": {append([]string{"agent", "--swarm-key", write("key2", "/key/swarm/psk/1.0.0/\n/base16/\n"+strings.Repeat("ab", 32)+"\n"), "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"}, ok...), "TCP"},
		"bad service":          {append([]string{"agent", "--service", "posts"}, ok...), "NAME=URL"},
		"bad service url":      {append([]string{"agent", "--service", "posts=localhost:80"}, ok...), "http"},
		"service twice":        {append([]string{"agent", "--service", "p=http://a", "--service", "p=http://b"}, ok...), "twice"},
		"bad service kind":     {append([]string{"agent", "--service", "k=https://a", "--service-kind", "k=helm"}, ok...), "kind"},
		"kind without service": {append([]string{"agent", "--service-kind", "k=kube"}, ok...), "no --service k"},
		"missing token file":   {append([]string{"agent", "--service", "k=https://a", "--service-token", "k=" + filepath.Join(dir, "none")}, ok...), "--service-token"},
		"empty token file":     {append([]string{"agent", "--service", "k=https://a", "--service-token", "k=" + write("tok", "\n")}, ok...), "empty"},
		"CA file not PEM":      {append([]string{"agent", "--service", "k=https://a", "--service-ca", "k=" + write("ca", "nope")}, ok...), "PEM"},
		"insecure unknown":     {append([]string{"agent", "--service-insecure", "k"}, ok...), "no --service k"},
		"bad api":              {append([]string{"agent", "--api", "7070"}, ok...), "HOST:PORT"},
		"bad probe settings":   {append([]string{"agent", "--suspect-after", "5"}, ok...), "suspect-after"},
		"bad log level":        {append([]string{"agent", "--log-level", "loud"}, ok...), "log-level"},
		"positional argument":  {append([]string{"agent", "extra"}, ok...), "no arguments"},
		"missing config":       {[]string{"agent", "--config", filepath.Join(dir, "none.json")}, "--config"},
		"config not JSON":      {[]string{"agent", "--config", write("c1.json", "site: a")}, "JSON"},
		"config unknown key":   {[]string{"agent", "--config", write("c2.json", `{"site": "a", "sight": "b"}`)}, `"sight"`},
		"config wrong type":    {[]string{"agent", "--config", write("c3.json", `{"site": "a", "data": "x", "trust-all": true, "peer": 3}`)}, "peer"},
		"id without data":      {[]string{"id"}, "data"},
		"id unusable data":     {[]string{"id", "--data", unusable}, "identity"},
		"sites bad agent URL":  {[]string{"sites", "--agent", "127.0.0.1:7070"}, "--agent"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, testkit.BuildBinary(t), tc.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		code := cmd.ProcessState.ExitCode()
		if code != exitBadUsage {
			t.Errorf("%s: exit %d (%v), want 2; stderr: %s", name, code, err, stderr.String())
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%s: message %q does not mention %q", name, stderr.String(), tc.want)
		}
		if strings.Contains(stderr.String(), "panic") {
			t.Errorf("%s: panicked: %s", name, stderr.String())
		}
	}
}
