package k8s

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"cheops/internal/testkit"
	"cheops/scope"
)

const manifest = `apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg1
data:
  k: v1
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg2
data:
  other: x
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: front
spec:
  replicas: 1
  selector:
    matchLabels: {app: front}
  template:
    metadata:
      labels: {app: front}
    spec:
      containers:
      - name: web
        image: nginx:IMAGE
        args: ["--a"]
`

// field reads a dotted path of an object read from a cluster.
func field(obj map[string]any, path string) any {
	var cur any = obj
	for _, p := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[p]
		case []any:
			var i int
			fmt.Sscan(p, &i)
			if i >= len(c) {
				return nil
			}
			cur = c[i]
		default:
			return nil
		}
	}
	return cur
}

// waitField waits until every listed cluster holds path with want.
func (w *world) waitField(sites []string, path, field_ string, want string) {
	w.t.Helper()
	testkit.Eventually(w.t, 30*time.Second, path+" "+field_+" = "+want+" on "+strings.Join(sites, ","), func() error {
		for _, s := range sites {
			obj := w.sites[s].kube.get(w.t, path)
			if obj == nil {
				return fmt.Errorf("%s: %s absent", s, path)
			}
			if got := fmt.Sprint(field(obj, field_)); got != want {
				return fmt.Errorf("%s: %s = %s", s, field_, got)
			}
		}
		return nil
	})
}

// TestKubectlThroughAgents is the pilot: three real clusters, plain
// kubectl through the agents, a namespace placed with a scope, updates
// that reach every replica, a cluster's agent down during a patch, the
// namespace attached to a third cluster, and the union of three.
func TestKubectlThroughAgents(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	ab := w.via("a", "{kube: a & b}")
	const ns = "/api/v1/namespaces/web"
	const cfg1 = ns + "/configmaps/cfg1"
	const front = "/apis/apps/v1/namespaces/web/deployments/front"

	t.Log("create a namespace with {kube: a & b}: it exists in a and b, not in c")
	out := w.kubectl(ab, "create", "namespace", "web")
	if !strings.Contains(out, "namespace/web created") {
		t.Fatalf("kubectl create: %q", out)
	}
	for _, s := range []string{"a", "b"} {
		if w.sites[s].kube.get(t, ns) == nil {
			t.Fatalf("cluster %s has no namespace web", s)
		}
	}
	if w.sites["c"].kube.get(t, ns) != nil {
		t.Fatal("cluster c holds namespace web, outside the scope")
	}
	nsID, ok := w.sites["a"].agent.Catalog().LookupLocal("kube", "a", ns)
	if !ok {
		t.Fatal("a's catalog does not record namespace web")
	}
	res, err := w.sites["a"].agent.Catalog().Get(t.Context(), nsID)
	if err != nil || strings.Join(res.Sites, ",") != "a,b" {
		t.Fatalf("catalog entry of web: %v %v", res.Sites, err)
	}
	if _, ok := w.sites["c"].agent.Catalog().LookupLocal("kube", "c", ns); ok {
		t.Fatal("c's catalog knows namespace web")
	}
	// kubectl reads it back by name through the agent, without a scope.
	if out := w.kubectl(w.via("a", ""), "get", "namespace", "web", "-o", "name"); strings.TrimSpace(out) != "namespace/web" {
		t.Fatalf("get by name: %q", out)
	}

	t.Log("the same through a named scope, /s/ab/svc/kube: no percent signs in the server URL")
	named := w.named("c", "ab")
	if out := w.kubectl(named, "create", "namespace", "named"); !strings.Contains(out, "namespace/named created") {
		t.Fatalf("kubectl create through /s/ab: %q", out)
	}
	for _, s := range []string{"a", "b"} {
		if w.sites[s].kube.get(t, "/api/v1/namespaces/named") == nil {
			t.Fatalf("cluster %s has no namespace named", s)
		}
	}
	if w.sites["c"].kube.get(t, "/api/v1/namespaces/named") != nil {
		t.Fatal("cluster c holds namespace named, outside the scope")
	}
	if out := w.kubectl(named, "get", "namespaces"); strings.Count(out, "\nnamed ") != 2 || !strings.Contains(out, "CLUSTER") {
		t.Fatalf("kubectl get through /s/ab, one row per cluster: %q", out)
	}

	t.Log("configmaps and a deployment in it: kubectl apply")
	file := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(file, []byte(strings.Replace(manifest, "IMAGE", "1.25", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	w.kubectl(ab, "apply", "-n", "web", "-f", file)
	w.waitField([]string{"a", "b"}, cfg1, "data.k", "v1")
	w.waitField([]string{"a", "b"}, ns+"/configmaps/cfg2", "data.other", "x")
	w.waitField([]string{"a", "b"}, front, "spec.replicas", "1")

	t.Log("kubectl scale, patch and apply by name: every replica follows")
	w.kubectl(ab, "scale", "-n", "web", "deployment/front", "--replicas=3")
	w.waitField([]string{"a", "b"}, front, "spec.replicas", "3")
	w.kubectl(ab, "patch", "-n", "web", "configmap", "cfg1", "-p", `{"data":{"k":"v2"}}`)
	w.waitField([]string{"a", "b"}, cfg1, "data.k", "v2")
	if err := os.WriteFile(file, []byte(strings.Replace(manifest, "IMAGE", "1.27", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	w.kubectl(ab, "apply", "-n", "web", "-f", file)
	w.waitField([]string{"a", "b"}, front, "spec.template.spec.containers.0.image", "nginx:1.27")
	// The manifest says one replica and k: v1: apply sets them back everywhere.
	w.waitField([]string{"a", "b"}, front, "spec.replicas", "1")
	w.waitField([]string{"a", "b"}, cfg1, "data.k", "v1")
	w.kubectl(ab, "scale", "-n", "web", "deployment/front", "--replicas=2")
	w.waitField([]string{"a", "b"}, front, "spec.replicas", "2")
	if w.sites["c"].kube.get(t, cfg1) != nil {
		t.Fatal("cluster c holds cfg1, outside the scope")
	}

	t.Log("kubectl apply --server-side of a new configmap: created on a and b, recorded")
	ssa := filepath.Join(t.TempDir(), "ssa.yaml")
	if err := os.WriteFile(ssa, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: \"1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.kubectl(ab, "apply", "--server-side", "-n", "web", "-f", ssa)
	w.waitField([]string{"a", "b"}, ns+"/configmaps/ssa", "data.a", "1")
	if _, ok := w.sites["a"].agent.Catalog().LookupLocal("kube", "a", ns+"/configmaps/ssa"); !ok {
		t.Fatal("the server-side applied configmap is not in a's catalog")
	}
	if w.sites["c"].kube.get(t, ns+"/configmaps/ssa") != nil {
		t.Fatal("cluster c holds ssa, outside the scope")
	}

	t.Log("b's agent down during a patch: b catches up once when back")
	w.stop("b")
	w.waitState(scope.Down, []string{"a"}, []string{"b"})
	// A JSON patch that appends: applied twice, it would leave two copies.
	out = w.kubectl(ab, "patch", "-n", "web", "deployment", "front", "--type=json",
		"-p", `[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--late"}]`)
	if !strings.Contains(out, "patched") {
		t.Fatalf("patch while b is down: %q", out)
	}
	w.waitField([]string{"a"}, front, "spec.template.spec.containers.0.args", "[--a --late]")
	w.waitField([]string{"b"}, front, "spec.template.spec.containers.0.args", "[--a]")
	frontID, _ := w.sites["a"].agent.Catalog().LookupLocal("kube", "a", front)
	if res, _ := w.sites["a"].agent.Catalog().Get(t.Context(), frontID); len(res.PerSite["b"].Pending) != 1 {
		t.Fatalf("b owes %v, want one operation", res.PerSite["b"].Pending)
	}
	w.start("b")
	w.waitState(scope.Up, []string{"a", "b"}, []string{"a", "b"})
	w.waitField([]string{"b"}, front, "spec.template.spec.containers.0.args", "[--a --late]")
	testkit.Eventually(t, 30*time.Second, "b's catalog shows the patch applied", func() error {
		res, err := w.sites["b"].agent.Catalog().Get(t.Context(), frontID)
		if err != nil {
			return err
		}
		if v := res.PerSite["b"]; len(v.Pending) != 0 || len(v.Failed) != 0 {
			return fmt.Errorf("b: pending %v failed %v", v.Pending, v.Failed)
		}
		return nil
	})
	w.waitField([]string{"b"}, front, "spec.template.spec.containers.0.args", "[--a --late]")

	t.Log("attach the namespace to c: kubectl against c shows it with its objects")
	body := strings.NewReader(`{"site": "c"}`)
	resp, err := http.Post(w.sites["a"].agent.URL()+"/v1/resources/"+nsID+"/attach", "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("attach: %d", resp.StatusCode)
	}
	viaC := w.via("c", "")
	if out := w.kubectl(viaC, "get", "namespace", "web", "-o", "name"); strings.TrimSpace(out) != "namespace/web" {
		t.Fatalf("c: %q", out)
	}
	out = w.kubectl(viaC, "get", "configmaps,deployments", "-n", "web", "-o", "name")
	for _, want := range []string{"configmap/cfg1", "configmap/cfg2", "configmap/ssa", "deployment.apps/front"} {
		if !strings.Contains(out, want) {
			t.Fatalf("c lists %q, without %s", out, want)
		}
	}
	w.waitField([]string{"c"}, cfg1, "data.k", "v1")
	w.waitField([]string{"c"}, front, "spec.replicas", "2")
	w.waitField([]string{"c"}, front, "spec.template.spec.containers.0.args", "[--a --late]")
	if uid := field(w.sites["c"].kube.get(t, cfg1), "metadata.uid"); uid == field(w.sites["a"].kube.get(t, cfg1), "metadata.uid") {
		t.Fatal("c's copy kept a's uid")
	}
	t.Log("...and keeps it replicated: a patch by name through a reaches c")
	w.kubectl(w.via("a", ""), "patch", "-n", "web", "configmap", "cfg1", "-p", `{"data":{"k":"v3"}}`)
	w.waitField([]string{"a", "b", "c"}, cfg1, "data.k", "v3")

	t.Log("kubectl get ns with {kube: a & b & c}: the union, with a CLUSTER column")
	abc := w.via("a", "{kube: a & b & c}")
	out = w.kubectl(abc, "get", "namespaces")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.Contains(lines[0], "CLUSTER") {
		t.Fatalf("no CLUSTER column:\n%s", out)
	}
	var webs []string
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "web" {
			webs = append(webs, f[len(f)-1])
		}
	}
	if strings.Join(webs, ",") != "a,b,c" {
		t.Fatalf("web listed on %v:\n%s", webs, out)
	}
	t.Logf("kubectl get namespaces through a with {kube: a & b & c}:\n%s", out)
	var list struct {
		Items []struct {
			Metadata struct {
				Name        string            `json:"name"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(w.kubectl(abc, "get", "namespaces", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	var tagged []string
	for _, it := range list.Items {
		if it.Metadata.Name == "web" {
			tagged = append(tagged, it.Metadata.Annotations["cheops.io/site"])
		}
	}
	if slices.Sort(tagged); strings.Join(tagged, ",") != "a,b,c" {
		t.Fatalf("-o json: web tagged %v", tagged)
	}
	out = w.kubectl(abc, "get", "namespaces", "--no-headers", "-o", `custom-columns=NAME:.metadata.name,CLUSTER:.metadata.annotations.cheops\.io/site`)
	var rows []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "web" {
			rows = append(rows, f[1])
		}
	}
	if slices.Sort(rows); strings.Join(rows, ",") != "a,b,c" {
		t.Fatalf("custom columns:\n%s", out)
	}
}

// TestWatchThroughAgents streams a watch from the local cluster and from
// another site's cluster over libp2p: events arrive while the stream is
// open.
func TestWatchThroughAgents(t *testing.T) {
	w := newWorld(t, "a", "b")
	for _, s := range []string{"a", "b"} {
		if status, body, err := w.sites[s].kube.do("POST", "/api/v1/namespaces", "application/json", []byte(`{"metadata":{"name":"live"}}`)); err != nil || status != http.StatusCreated {
			t.Fatalf("%s: %d %s %v", s, status, body, err)
		}
	}
	for _, c := range []struct{ name, via, scope, cluster string }{
		{"local", "a", "", "a"},
		{"remote", "a", "{kube: b}", "b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			url := w.server(c.via, c.scope) + "/api/v1/namespaces/live/configmaps?watch=1"
			req, _ := http.NewRequestWithContext(t.Context(), "GET", url, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cheops-Site") != c.cluster {
				t.Fatalf("watch: %d from %q, want 200 from %s", resp.StatusCode, resp.Header.Get("X-Cheops-Site"), c.cluster)
			}
			events := make(chan string, 16)
			go func() {
				defer close(events)
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					var ev struct {
						Type   string `json:"type"`
						Object struct {
							Metadata struct {
								Name string `json:"name"`
							} `json:"metadata"`
						} `json:"object"`
					}
					if json.Unmarshal(sc.Bytes(), &ev) == nil {
						events <- ev.Type + " " + ev.Object.Metadata.Name
					}
				}
			}()
			name := "seen-" + c.name
			// If the watch starts after the create, the object is listed
			// as ADDED anyway; either way it arrives on an open stream.
			k := w.sites[c.cluster].kube
			if status, body, err := k.do("POST", "/api/v1/namespaces/live/configmaps", "application/json",
				[]byte(`{"metadata":{"name":"`+name+`"}}`)); err != nil || status != http.StatusCreated {
				t.Fatalf("%d %s %v", status, body, err)
			}
			deadline := time.After(30 * time.Second)
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						t.Fatal("the watch ended")
					}
					if ev == "ADDED "+name {
						return
					}
				case <-deadline:
					t.Fatal("no event within 30 s")
				}
			}
		})
	}
}
