package k8s

import (
	"bytes"
	"cheops/internal/testkit"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// agentDo sends a request to a site's agent, with a scope in the path
// ("" for none).
func (w *world) agentDo(site, scopeText, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, w.server(site, scopeText)+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkKubeGet measures what cheops adds to a read of one namespace:
// straight from the API server, through the local agent (the catalog
// finds it, the local cluster answers), and through another site's agent
// over libp2p; then kubectl get, a whole process, direct and through the
// local agent.
//
//	CHEOPS_K8S=1 go test -run '^$' -bench KubeGet -benchtime 300x ./test/k8s
func BenchmarkKubeGet(b *testing.B) {
	w := newWorld(b, "a", "b")
	if status, body, err := w.agentDo("a", "{kube: a & b}", "POST", "/api/v1/namespaces", []byte(`{"metadata":{"name":"web"}}`)); err != nil || status != http.StatusCreated {
		b.Fatalf("create web: %d %s %v", status, body, err)
	}
	if status, body, err := w.agentDo("a", "{kube: a}", "POST", "/api/v1/namespaces", []byte(`{"metadata":{"name":"solo"}}`)); err != nil || status != http.StatusCreated {
		b.Fatalf("create solo: %d %s %v", status, body, err)
	}
	k := w.sites["a"].kube
	runs := []struct {
		name string
		get  func() (int, []byte, error)
	}{
		{"direct", func() (int, []byte, error) { return k.do("GET", "/api/v1/namespaces/web", "", nil) }},
		{"local-agent", func() (int, []byte, error) { return w.agentDo("a", "", "GET", "/api/v1/namespaces/web", nil) }},
		{"remote-agent", func() (int, []byte, error) { return w.agentDo("b", "{kube: a}", "GET", "/api/v1/namespaces/solo", nil) }},
	}
	for _, r := range runs {
		b.Run(r.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				start := time.Now()
				status, body, err := r.get()
				lat = append(lat, time.Since(start))
				if err != nil || status != http.StatusOK {
					b.Fatalf("%d %s %v", status, body, err)
				}
			}
			b.ReportMetric(ms(percentile(lat, 0.5)), "p50-ms")
			b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
		})
	}
	home := b.TempDir() // one discovery cache for every kubectl run
	for _, r := range []struct{ name, kubeconfig string }{
		{"kubectl-direct", w.direct("a")},
		{"kubectl-local-agent", w.via("a", "")},
	} {
		b.Run(r.name, func(b *testing.B) {
			n := min(b.N, 30)
			lat := make([]time.Duration, 0, n)
			for i := -1; i < n; i++ { // run -1 fills kubectl's discovery cache, untimed
				cmd := exec.Command(w.bins["kubectl"], "--kubeconfig", r.kubeconfig, "get", "namespace", "web", "-o", "name")
				cmd.Env = append(os.Environ(), "HOME="+home)
				start := time.Now()
				out, err := cmd.CombinedOutput()
				if i >= 0 {
					lat = append(lat, time.Since(start))
				}
				if err != nil || strings.TrimSpace(string(out)) != "namespace/web" {
					b.Fatalf("kubectl: %v %s", err, out)
				}
			}
			b.ReportMetric(ms(percentile(lat, 0.5)), "p50-ms")
			b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
		})
	}
}

// BenchmarkAttach100ConfigMaps measures how long c takes to hold a
// namespace of 100 configmaps attached from a: from the attach request
// to c's API server listing all 100 (the attach answers once every copy
// is made and recorded).
//
//	CHEOPS_K8S=1 go test -run '^$' -bench Attach100 -benchtime 1x ./test/k8s
func BenchmarkAttach100ConfigMaps(b *testing.B) {
	const count = 100
	w := newWorld(b, "a", "c")
	for i := 0; i < b.N; i++ {
		ns := fmt.Sprintf("bulk%d", i)
		if status, body, err := w.agentDo("a", "{kube: a}", "POST", "/api/v1/namespaces", []byte(`{"metadata":{"name":"`+ns+`"}}`)); err != nil || status != http.StatusCreated {
			b.Fatalf("create %s: %d %s %v", ns, status, body, err)
		}
		for j := 0; j < count; j++ {
			cm := fmt.Sprintf(`{"metadata":{"name":"cm%03d"},"data":{"key":"value %d","blob":"%s"}}`, j, j, strings.Repeat("x", 512))
			if status, body, err := w.agentDo("a", "{kube: a}", "POST", "/api/v1/namespaces/"+ns+"/configmaps", []byte(cm)); err != nil || status != http.StatusCreated {
				b.Fatalf("create cm%03d: %d %s %v", j, status, body, err)
			}
		}
		id, ok := w.sites["a"].agent.Catalog().LookupLocal("kube", "a", "/api/v1/namespaces/"+ns)
		if !ok {
			b.Fatal("namespace not in a's catalog")
		}
		start := time.Now()
		resp, err := http.Post(w.sites["a"].agent.URL()+"/v1/resources/"+id+"/attach", "application/json", strings.NewReader(`{"site":"c"}`))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("attach: %d", resp.StatusCode)
		}
		answered := time.Since(start)
		var held time.Duration
		testkit.Eventually(b, 60*time.Second, "c holds 100 configmaps", func() error {
			status, body, err := w.sites["c"].kube.do("GET", "/api/v1/namespaces/"+ns+"/configmaps", "", nil)
			if err != nil || status != http.StatusOK {
				return fmt.Errorf("%d %v", status, err)
			}
			var list struct{ Items []json.RawMessage }
			if err := json.Unmarshal(body, &list); err != nil {
				return err
			}
			if len(list.Items) != count {
				return fmt.Errorf("%d configmaps", len(list.Items))
			}
			held = time.Since(start)
			return nil
		})
		b.ReportMetric(answered.Seconds(), "attach-answered-s")
		b.ReportMetric(held.Seconds(), "c-holds-all-s")
		// Every configmap is in c's catalog too: later writes reach it.
		testkit.Eventually(b, 30*time.Second, "c's catalog holds the configmaps", func() error {
			for j := 0; j < count; j++ {
				if _, ok := w.sites["c"].agent.Catalog().LookupLocal("kube", "c", fmt.Sprintf("/api/v1/namespaces/%s/configmaps/cm%03d", ns, j)); !ok {
					return fmt.Errorf("cm%03d unknown at c", j)
				}
			}
			return nil
		})
	}
}
