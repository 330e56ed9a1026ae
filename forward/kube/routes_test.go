package kube

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"cheops/forward"
)

func TestRoute(t *testing.T) {
	r := New(nil)
	cases := []struct {
		path string
		want forward.Route
	}{
		{"/api", forward.Route{}},
		{"/api/v1", forward.Route{}},
		{"/apis", forward.Route{}},
		{"/apis/apps/v1", forward.Route{}},
		{"/openapi/v2", forward.Route{}},
		{"/version", forward.Route{}},
		{"/api/v1/namespaces", forward.Route{Collection: "/api/v1/namespaces"}},
		{"/api/v1/namespaces/web", forward.Route{Collection: "/api/v1/namespaces", ID: "web"}},
		{"/api/v1/namespaces/web/status", forward.Route{Collection: "/api/v1/namespaces", ID: "web", Rest: "/status"}},
		{"/api/v1/namespaces/web/finalize", forward.Route{Collection: "/api/v1/namespaces", ID: "web", Rest: "/finalize"}},
		{"/api/v1/namespaces/web/configmaps", forward.Route{Collection: "/api/v1/namespaces/web/configmaps"}},
		{"/api/v1/namespaces/web/configmaps/cfg", forward.Route{Collection: "/api/v1/namespaces/web/configmaps", ID: "cfg"}},
		{"/api/v1/configmaps", forward.Route{Collection: "/api/v1/configmaps"}},
		{"/apis/apps/v1/namespaces/web/deployments/front/scale",
			forward.Route{Collection: "/apis/apps/v1/namespaces/web/deployments", ID: "front", Rest: "/scale"}},
		{"/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
			forward.Route{Collection: "/apis/rbac.authorization.k8s.io/v1/clusterroles", ID: "admin"}},
		{"/api/v1/watch/namespaces/web/configmaps", forward.Route{Collection: "/api/v1/namespaces/web/configmaps"}},
		{"/api/v1/namespaces//x", forward.Route{}},
	}
	for _, c := range cases {
		if got := r.Route(c.path); got != c.want {
			t.Errorf("Route(%q) = %+v, want %+v", c.path, got, c.want)
		}
	}
	if k := r.Route("/api/v1/namespaces/web/configmaps/cfg").Key(); k != "/api/v1/namespaces/web/configmaps/cfg" {
		t.Errorf("key %q", k)
	}
}

func TestStream(t *testing.T) {
	r := New(nil)
	for path, want := range map[string]bool{
		"/api/v1/namespaces?watch=true":               true,
		"/api/v1/namespaces?watch=1&resourceVersion=": true,
		"/api/v1/namespaces?watch=false":              false,
		"/api/v1/namespaces?limit=500":                false,
		"/api/v1/watch/namespaces":                    true,
		"/api/v1/namespaces/a/pods/p/log?follow=true": true,
	} {
		if got := r.Stream(httptest.NewRequest("GET", path, nil)); got != want {
			t.Errorf("Stream(%s) = %v", path, got)
		}
	}
}

func TestCopyStripsServerFields(t *testing.T) {
	in := `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg","namespace":"web","uid":"u","resourceVersion":"7",
		"creationTimestamp":"2025-01-01T00:00:00Z","managedFields":[{}],"generation":3,"labels":{"a":"b"}},"data":{"k":"v"},"status":{"x":1}}`
	out, err := New(nil).Copy([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var o map[string]any
	if err := json.Unmarshal(out, &o); err != nil {
		t.Fatal(err)
	}
	md := o["metadata"].(map[string]any)
	for _, f := range []string{"uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"} {
		if _, ok := md[f]; ok {
			t.Errorf("%s kept: %s", f, out)
		}
	}
	if _, ok := o["status"]; ok {
		t.Errorf("status kept: %s", out)
	}
	if md["name"] != "cfg" || md["namespace"] != "web" || md["labels"].(map[string]any)["a"] != "b" || o["data"].(map[string]any)["k"] != "v" {
		t.Errorf("client fields lost: %s", out)
	}
	if _, err := New(nil).Copy([]byte("not json")); err == nil {
		t.Error("copy of a non-object succeeded")
	}
}

func TestMergeTable(t *testing.T) {
	table := func(names ...string) []byte {
		var rows []string
		for _, n := range names {
			rows = append(rows, `{"cells":["`+n+`","Active"],"object":{"kind":"PartialObjectMetadata","metadata":{"name":"`+n+`"}}}`)
		}
		return []byte(`{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"9","continue":"x"},
			"columnDefinitions":[{"name":"Name","type":"string"},{"name":"Status","type":"string"}],"rows":[` + strings.Join(rows, ",") + `]}`)
	}
	body, ct, err := New(nil).Merge(nil, []forward.SiteAnswer{{Site: "a", Body: table("web", "default")}, {Site: "b", Body: table("web")}})
	if err != nil || ct != "application/json" {
		t.Fatal(err, ct)
	}
	var out struct {
		Metadata map[string]any `json:"metadata"`
		Columns  []struct {
			Name string `json:"name"`
		} `json:"columnDefinitions"`
		Rows []struct {
			Cells  []string `json:"cells"`
			Object struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			} `json:"object"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Columns) != 3 || out.Columns[2].Name != ClusterColumn {
		t.Fatalf("columns %+v", out.Columns)
	}
	var got []string
	for _, r := range out.Rows {
		got = append(got, strings.Join(r.Cells, "/")+"@"+r.Object.Metadata.Annotations[SiteAnnotation])
	}
	if strings.Join(got, " ") != "web/Active/a@a default/Active/a@a web/Active/b@b" {
		t.Errorf("rows %v", got)
	}
	if len(out.Metadata) != 0 {
		t.Errorf("list metadata kept: %v", out.Metadata)
	}
}

func TestMergeList(t *testing.T) {
	list := `{"kind":"NamespaceList","apiVersion":"v1","metadata":{"resourceVersion":"3"},"items":[{"metadata":{"name":"web"}}]}`
	body, _, err := New(nil).Merge(nil, []forward.SiteAnswer{{Site: "a", Body: []byte(list)}, {Site: "c", Body: []byte(list)}})
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Items []struct {
			Metadata struct {
				Name        string            `json:"name"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Items) != 2 || out.Items[0].Metadata.Annotations[SiteAnnotation] != "a" || out.Items[1].Metadata.Annotations[SiteAnnotation] != "c" {
		t.Errorf("items %s", body)
	}
	if _, _, err := New(nil).Merge(nil, []forward.SiteAnswer{{Site: "a", Body: []byte(`{"kind":"Status"}`)}}); err == nil {
		t.Error("merged a Status")
	}
}

func TestContentsAndItems(t *testing.T) {
	r := New(nil)
	got := r.Contents(r.Route("/api/v1/namespaces/web"))
	if strings.Join(got, " ") != "/api/v1/namespaces/web/configmaps /apis/apps/v1/namespaces/web/deployments" {
		t.Errorf("contents %v", got)
	}
	if c := r.Contents(r.Route("/api/v1/namespaces/web/configmaps/x")); c != nil {
		t.Errorf("a configmap holds %v", c)
	}
	names, err := r.Items([]byte(`{"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}`))
	if err != nil || strings.Join(names, ",") != "a,b" {
		t.Errorf("items %v %v", names, err)
	}
	if n, ok := r.Name([]byte(`{"metadata":{"generateName":"x-"}}`)); ok {
		t.Errorf("name %q from generateName", n)
	}
}

func TestProtobufName(t *testing.T) {
	// runtime.Unknown{TypeMeta: {apiVersion: v1, kind: Namespace}, Raw:
	// Namespace{ObjectMeta{Name: web}}} as kubectl sends it.
	ld := func(field byte, b []byte) []byte { return append([]byte{field<<3 | 2, byte(len(b))}, b...) }
	meta := append(ld(1, []byte("web")), ld(3, []byte("ns"))...)
	raw := append(ld(1, meta), ld(2, []byte{})...)
	typeMeta := append(ld(1, []byte("v1")), ld(2, []byte("Namespace"))...)
	body := append([]byte("k8s\x00"), append(ld(1, typeMeta), ld(2, raw)...)...)
	if name, ok := New(nil).Name(body); !ok || name != "web" {
		t.Fatalf("Name = %q %v", name, ok)
	}
	for _, bad := range [][]byte{[]byte("k8s\x00"), []byte("k8s\x00\x12\x7f"), append([]byte("k8s\x00"), ld(2, ld(1, nil))...)} {
		if name, ok := New(nil).Name(bad); ok {
			t.Errorf("Name(%q) = %q", bad, name)
		}
	}
}

func TestOutgoingAsksForJSON(t *testing.T) {
	h := http.Header{"Accept": {"application/vnd.kubernetes.protobuf,application/json"}}
	New(nil).Outgoing(h)
	if got := h.Get("Accept"); got != "application/json" {
		t.Errorf("Accept %q", got)
	}
	h = http.Header{"Accept": {"application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io"}}
	New(nil).Outgoing(h)
	if got := h.Get("Accept"); got != "application/json" {
		t.Errorf("Accept %q", got)
	}
}
