package k8s

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/agent"
	"cheops/forward"
	"cheops/internal/testkit"
	"cheops/node"
	"cheops/scope"
)

// The end-to-end tests of this package run real Kubernetes API servers:
// `make e2e-k8s` builds them (contrib/k8s/build.sh) and sets CHEOPS_K8S=1.
// Without it they skip, so that `make test` never builds Kubernetes.
const (
	enableEnv = "CHEOPS_K8S"
	binEnv    = "CHEOPS_K8S_BIN" // the directory of the built binaries
	version   = "v1.33.4"
)

var logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// binaries finds kube-apiserver, kube-controller-manager, kubectl and
// etcd, or skips the test.
func binaries(t testing.TB) map[string]string {
	t.Helper()
	if os.Getenv(enableEnv) != "1" {
		t.Skipf("real Kubernetes API servers: run `make e2e-k8s` (or set %s=1 after contrib/k8s/build.sh)", enableEnv)
	}
	dir := os.Getenv(binEnv)
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "cheops", "k8s", version)
	}
	out := map[string]string{}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kubectl"} {
		p := filepath.Join(dir, b)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v (run contrib/k8s/build.sh)", b, err)
		}
		out[b] = p
	}
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcd is not installed (apt-get install etcd-server; contrib/k8s/build.sh does it as root)")
	}
	out["etcd"] = etcd
	return out
}

// process is a child process stopped at the end of the test.
func startProcess(t testing.TB, dir, name, bin string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			if data, err := os.ReadFile(logf.Name()); err == nil && len(data) > 0 {
				t.Logf("last lines of %s:\n%s", name, tail(string(data), 15))
			}
		}
	})
	return cmd
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startEtcd runs one etcd that every cluster shares, each under its own
// --etcd-prefix.
func startEtcd(t testing.TB, bins map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	client, peerPort := "http://127.0.0.1:"+testkit.FreePort(t), "http://127.0.0.1:"+testkit.FreePort(t)
	startProcess(t, dir, "etcd", bins["etcd"], "--data-dir", filepath.Join(dir, "data"), "--name", "cheops",
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peerPort, "--initial-advertise-peer-urls", peerPort,
		"--initial-cluster", "cheops="+peerPort, "--unsafe-no-fsync")
	testkit.Eventually(t, 30*time.Second, "etcd healthy", func() error {
		resp, err := http.Get(client + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	return client
}

// kcluster is one real Kubernetes API server (and its controller manager).
type kcluster struct {
	name  string
	url   string // https://127.0.0.1:PORT
	token string // of a user in system:masters
	ca    string // the serving certificate's file (its chain included)
	dir   string
}

// startKube runs a kube-apiserver with a self-signed certificate and a
// token file, and a kube-controller-manager with the namespace and
// garbage-collector controllers (a deleted namespace finishes), and waits
// until the server is ready.
func startKube(t testing.TB, bins map[string]string, etcd, name string) *kcluster {
	t.Helper()
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	write := func(file string, data []byte) string {
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	saKey := write("sa.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	saPub := write("sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	k := &kcluster{name: name, token: hex.EncodeToString(tok), dir: dir}
	tokens := write("tokens.csv", []byte(k.token+",admin,admin,system:masters\n"))
	port := testkit.FreePort(t)
	k.url = "https://127.0.0.1:" + port
	certDir := filepath.Join(dir, "certs")
	k.ca = filepath.Join(certDir, "apiserver.crt")
	startProcess(t, dir, "kube-apiserver", bins["kube-apiserver"],
		"--bind-address=127.0.0.1", "--secure-port="+port, "--cert-dir="+certDir,
		"--etcd-servers="+etcd, "--etcd-prefix=/cheops-"+name,
		"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file="+saPub,
		"--service-account-signing-key-file="+saKey, "--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none", "--token-auth-file="+tokens, "--authorization-mode=AlwaysAllow",
		"--enable-priority-and-fairness=false")
	testkit.Eventually(t, 90*time.Second, name+" /readyz", func() error {
		status, body, err := k.do("GET", "/readyz", "", nil)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("%d %s", status, tail(string(body), 3))
		}
		return nil
	})
	kubeconfig := k.kubeconfig(t, k.url, "")
	startProcess(t, dir, "kube-controller-manager", bins["kube-controller-manager"],
		"--kubeconfig="+kubeconfig, "--controllers=namespace,garbagecollector", "--leader-elect=false",
		"--secure-port=0", "--use-service-account-credentials=false")
	return k
}

var insecureClient = &http.Client{Timeout: 30 * time.Second,
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // self-signed test clusters

// do calls the API server directly, as its admin.
func (k *kcluster) do(method, path, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, k.url+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := insecureClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// get reads one object straight from the cluster: nil when absent.
func (k *kcluster) get(t testing.TB, path string) map[string]any {
	t.Helper()
	status, body, err := k.do("GET", path, "", nil)
	if err != nil {
		t.Fatalf("%s GET %s: %v", k.name, path, err)
	}
	if status == http.StatusNotFound {
		return nil
	}
	if status != http.StatusOK {
		t.Fatalf("%s GET %s: %d %s", k.name, path, status, body)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// kubeconfig writes a kubeconfig for server; token "" means the
// cluster's admin token. Servers that are agents carry no token.
func (k *kcluster) kubeconfig(t testing.TB, server, file string) string {
	t.Helper()
	if file == "" {
		file = "direct.kubeconfig"
	}
	token := ""
	if strings.HasPrefix(server, "https:") {
		token = "    token: " + k.token + "\n"
	}
	cfg := "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: " + server +
		"\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n" + token +
		"contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
	if token == "" {
		cfg = strings.Replace(cfg, "  user:\n", "  user: {}\n", 1)
	}
	p := filepath.Join(k.dir, file)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// site is one agent in front of one cluster.
type site struct {
	name  string
	dir   string
	kube  *kcluster
	agent *agent.Agent
}

// world is three clusters on loopback, each behind its own agent.
type world struct {
	t     testing.TB
	bins  map[string]string
	ids   []peer.ID
	boot  []string
	sites map[string]*site
	names []string
}

// newWorld starts one etcd, one cluster per name and one agent in front
// of each, and waits until the agents see each other up.
func newWorld(t testing.TB, names ...string) *world {
	bins := binaries(t)
	etcd := startEtcd(t, bins)
	w := &world{t: t, bins: bins, sites: map[string]*site{}, names: names}
	for _, n := range names {
		dir := filepath.Join(t.TempDir(), n)
		_, id, err := node.LoadIdentity(dir)
		if err != nil {
			t.Fatal(err)
		}
		w.ids = append(w.ids, id)
		w.sites[n] = &site{name: n, dir: dir, kube: startKube(t, bins, etcd, n)}
	}
	for _, n := range names {
		w.start(n)
	}
	w.waitState(scope.Up, names, names)
	t.Cleanup(func() {
		for _, s := range w.sites {
			if s.agent != nil {
				s.agent.Close()
			}
		}
	})
	return w
}

func (w *world) start(name string) {
	w.t.Helper()
	s := w.sites[name]
	cfg := agent.DefaultConfig()
	cfg.API = "127.0.0.1:0"
	cfg.Node.Site, cfg.Node.DataDir, cfg.Node.Trust, cfg.Node.Peers = name, s.dir, w.ids, w.boot
	cfg.Node.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Node.ProbeInterval, cfg.Node.ProbeTimeout = 100*time.Millisecond, 500*time.Millisecond
	cfg.Node.AnnounceInterval, cfg.Node.MaxRedialBackoff = 200*time.Millisecond, 300*time.Millisecond
	// Tests assert which clusters answered: a replica deadline of 1 s
	// keeps a loaded machine (-race, packages in parallel) from reporting
	// an up cluster pending (the default is max(50 ms, 4 RTT)).
	cfg.ReplicaWait = time.Second
	svc, err := forward.NewService("kube", s.kube.url)
	if err != nil {
		w.t.Fatal(err)
	}
	svc.Kind, svc.Upstream.Token = forward.KindKube, s.kube.token
	if s.kube.ca != "" {
		if svc.Upstream.TLS, err = forward.UpstreamTLS(s.kube.ca, false); err != nil {
			w.t.Fatal(err)
		}
	}
	cfg.Services = []forward.Service{svc}
	// A named scope: kubectl's server URL without percent signs.
	cfg.Scopes = map[string]string{"ab": "{kube: a & b}"}
	cfg.Logger = logger
	a, err := agent.Start(context.Background(), cfg)
	if err != nil {
		w.t.Fatalf("start agent %s: %v", name, err)
	}
	s.agent = a
	if w.boot == nil {
		w.boot = a.Node().Addrs()[:1]
	}
}

func (w *world) stop(name string) {
	w.sites[name].agent.Close()
	w.sites[name].agent = nil
}

// waitState waits until every observer sees every subject in state.
func (w *world) waitState(state scope.State, observers, subjects []string) {
	w.t.Helper()
	testkit.Eventually(w.t, 30*time.Second, "sites "+state.String(), func() error {
		for _, a := range observers {
			for _, b := range subjects {
				if a == b {
					continue
				}
				if st := w.sites[a].agent.Node().View().Sites[b].State; st != state {
					return fmt.Errorf("%s sees %s %v", a, b, st)
				}
			}
		}
		return nil
	})
}

// server is the base URL kubectl takes to reach the cluster service
// through a site's agent, with a scope carried in the path ("" for none).
func (w *world) server(site, scopeText string) string {
	base := w.sites[site].agent.URL()
	if scopeText == "" {
		return base + "/svc/kube"
	}
	return base + "/scope/" + url.PathEscape(scopeText) + "/svc/kube"
}

// kubectl runs the real kubectl against server (an agent or a cluster)
// and returns its standard output; it fails the test on a non-zero exit.
func (w *world) kubectl(kubeconfig string, args ...string) string {
	w.t.Helper()
	out, err := w.kubectlErr(kubeconfig, args...)
	if err != nil {
		w.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (w *world) kubectlErr(kubeconfig string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bins["kubectl"], append([]string{"--kubeconfig", kubeconfig, "--request-timeout=30s"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+w.t.TempDir()) // no cache shared between runs
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// via writes a kubeconfig that reaches the clusters through site's agent
// with a scope ("" for none).
func (w *world) via(site, scopeText string) string {
	w.t.Helper()
	h := fnv.New32a()
	h.Write([]byte(scopeText))
	return w.sites[site].kube.kubeconfig(w.t, w.server(site, scopeText), fmt.Sprintf("via-%s-%08x.kubeconfig", site, h.Sum32()))
}

// named writes a kubeconfig that reaches the clusters through site's
// agent with a named scope (/s/NAME/svc/kube).
func (w *world) named(site, name string) string {
	w.t.Helper()
	return w.sites[site].kube.kubeconfig(w.t, w.sites[site].agent.URL()+"/s/"+name+"/svc/kube", "named-"+site+"-"+name+".kubeconfig")
}

// direct writes a kubeconfig straight to a site's cluster.
func (w *world) direct(site string) string {
	return w.sites[site].kube.kubeconfig(w.t, w.sites[site].kube.url, "")
}
