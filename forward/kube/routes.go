// Package kube puts Kubernetes API servers behind cheops agents: one
// cluster per site, kubectl unchanged. It implements forward.Routes for
// the Kubernetes API: where its objects are in request paths (namespaced
// and cluster-scoped, with subresources), their names as global ids,
// watches streamed, cross reads merged (Tables get a CLUSTER column, lists
// a cheops.io/site annotation per item), and the copy of an object to
// another cluster with the fields the server sets stripped, a namespace
// with its configmaps and deployments.
//
// A Kubernetes object is named by its client (metadata.name) and that
// name is the same in every cluster, so the forwarder never rewrites a
// body: the catalog records which clusters hold the object, under its
// path (for example /api/v1/namespaces/web or
// /apis/apps/v1/namespaces/web/deployments/front).
//
// See docs/kubernetes.md for the agent flags, a kubeconfig per scope and
// the measured figures.
package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"cheops/forward"
)

// SiteAnnotation tags each item of a merged list with the cluster (cheops
// site) that answered it.
const SiteAnnotation = "cheops.io/site"

// ClusterColumn is the column a merged Table gets: the cluster (cheops
// site) of each row.
const ClusterColumn = "Cluster"

// Routes is forward.Routes (and forward.Container) for a Kubernetes API
// server. The zero value is not usable; take New.
type Routes struct {
	contents []string
}

// DefaultContents are the collections a namespace's attach copies along
// with it; "{ns}" stands for the namespace's name.
var DefaultContents = []string{
	"/api/v1/namespaces/{ns}/configmaps",
	"/apis/apps/v1/namespaces/{ns}/deployments",
}

// New returns the routes of a Kubernetes API server. contents lists the
// collections a namespace's attach copies (nil: DefaultContents).
func New(contents []string) *Routes {
	if contents == nil {
		contents = DefaultContents
	}
	return &Routes{contents: contents}
}

var (
	_ forward.Routes    = (*Routes)(nil)
	_ forward.Container = (*Routes)(nil)
)

// namespaceSubresources are the subresources of a namespace, which
// /api/v1/namespaces/{name}/{x} names instead of a namespaced collection
// (as the API server's own request parsing decides).
var namespaceSubresources = map[string]bool{"status": true, "finalize": true}

// Route splits a Kubernetes API path:
//
//	/api/v1/namespaces/web                          cluster-scoped item
//	/api/v1/namespaces/web/configmaps/cfg           namespaced item
//	/apis/apps/v1/namespaces/web/deployments/front/scale   with a subresource
//	/api/v1/watch/namespaces                        the old watch form
//
// Everything else (/api, /apis, /apis/apps/v1, /openapi/v2, /version,
// /healthz) is no resource.
func (*Routes) Route(path string) forward.Route {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	var base int
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		base = 2
	case len(parts) >= 4 && parts[0] == "apis":
		base = 3
	default:
		return forward.Route{}
	}
	prefix := "/" + strings.Join(parts[:base], "/")
	rest := parts[base:]
	if rest[0] == "watch" {
		rest = rest[1:]
		if len(rest) == 0 {
			return forward.Route{}
		}
	}
	for _, p := range rest {
		if p == "" {
			return forward.Route{}
		}
	}
	if rest[0] == "namespaces" && len(rest) >= 3 && !namespaceSubresources[rest[2]] {
		prefix += "/namespaces/" + rest[1]
		rest = rest[2:]
	}
	r := forward.Route{Collection: prefix + "/" + rest[0]}
	if len(rest) > 1 {
		r.ID = rest[1]
	}
	if len(rest) > 2 {
		r.Rest = "/" + strings.Join(rest[2:], "/")
	}
	return r
}

// object is what every Kubernetes object has.
type object struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

// Name reads metadata.name, from JSON or from Kubernetes' protobuf
// encoding (kubectl's typed requests); false when the object has none (the server
// then picks one from metadata.generateName).
func (*Routes) Name(body []byte) (string, bool) {
	if name, ok := protoName(body); ok {
		return name, true
	}
	var o object
	if json.Unmarshal(body, &o) != nil || o.Metadata.Name == "" {
		return "", false
	}
	return o.Metadata.Name, true
}

// Stream reports a watch (?watch=true, or the old /watch/ paths) or a
// followed log: their answers never end by themselves.
func (*Routes) Stream(r *http.Request) bool {
	q := r.URL.Query()
	switch strings.ToLower(q.Get("watch")) {
	case "true", "1":
		return true
	}
	if strings.ToLower(q.Get("follow")) == "true" {
		return true
	}
	return strings.Contains(r.URL.Path, "/watch/")
}

// ErrNotMergeable is returned by Merge for answers that are neither a
// Table nor a list.
var ErrNotMergeable = errors.New("kube: answer is neither a Table nor a list")

// Merge joins the answers of several clusters to one read of a
// collection. A Table (what kubectl get asks for) gets a Cluster column
// and one row per object per cluster; a list (-o json, -o yaml) gets each
// item annotated with cheops.io/site. The merged answer has no continue
// token and no resourceVersion: it is the union at one moment, not a
// version of any cluster.
func (*Routes) Merge(_ *http.Request, answers []forward.SiteAnswer) ([]byte, string, error) {
	var out map[string]any
	var rows, items []any
	for _, a := range answers {
		var doc map[string]any
		dec := json.NewDecoder(bytes.NewReader(a.Body))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			return nil, "", fmt.Errorf("%w: %s: %v", ErrNotMergeable, a.Site, err)
		}
		if out == nil {
			out = doc
		}
		switch {
		case doc["kind"] == "Table":
			r, _ := doc["rows"].([]any)
			for _, row := range r {
				if m, ok := row.(map[string]any); ok {
					cells, _ := m["cells"].([]any)
					m["cells"] = append(cells, a.Site)
					annotate(m["object"], a.Site)
				}
				rows = append(rows, row)
			}
		case doc["items"] != nil || strings.HasSuffix(fmt.Sprint(doc["kind"]), "List"):
			it, _ := doc["items"].([]any)
			for _, item := range it {
				annotate(item, a.Site)
				items = append(items, item)
			}
		default:
			return nil, "", fmt.Errorf("%w: %s answered kind %v", ErrNotMergeable, a.Site, doc["kind"])
		}
	}
	if out["kind"] == "Table" {
		cols, _ := out["columnDefinitions"].([]any)
		out["columnDefinitions"] = append(cols, map[string]any{"name": ClusterColumn, "type": "string", "format": "",
			"description": "The cluster (cheops site) that holds the object.", "priority": 0})
		if rows == nil {
			rows = []any{}
		}
		out["rows"] = rows
	} else {
		if items == nil {
			items = []any{}
		}
		out["items"] = items
	}
	if md, ok := out["metadata"].(map[string]any); ok {
		delete(md, "continue")
		delete(md, "remainingItemCount")
		delete(md, "resourceVersion")
	}
	body, err := json.Marshal(out)
	return body, "application/json", err
}

// annotate sets cheops.io/site in an object's metadata.annotations.
func annotate(obj any, site string) {
	o, ok := obj.(map[string]any)
	if !ok {
		return
	}
	md, ok := o["metadata"].(map[string]any)
	if !ok {
		md = map[string]any{}
		o["metadata"] = md
	}
	ann, ok := md["annotations"].(map[string]any)
	if !ok {
		ann = map[string]any{}
		md["annotations"] = ann
	}
	ann[SiteAnnotation] = site
}

// serverFields are the metadata fields a server sets and a create must
// not carry to another cluster.
var serverFields = []string{"uid", "resourceVersion", "managedFields", "creationTimestamp", "generation",
	"selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"}

// Copy strips from an object what its cluster set: metadata uid,
// resourceVersion, managedFields, creationTimestamp, generation, selfLink,
// deletion marks, and status. What the client wrote (name, labels,
// annotations, spec, data) stays.
func (*Routes) Copy(body []byte) ([]byte, error) {
	var o map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("kube: copy: %w", err)
	}
	if md, ok := o["metadata"].(map[string]any); ok {
		for _, f := range serverFields {
			delete(md, f)
		}
	}
	delete(o, "status")
	return json.Marshal(o)
}

// Contents lists the collections a namespace holds that its attach
// copies; other objects hold nothing.
func (r *Routes) Contents(route forward.Route) []string {
	if route.ID == "" || route.Rest != "" || !strings.HasSuffix(route.Collection, "/api/v1/namespaces") {
		return nil
	}
	out := make([]string, len(r.contents))
	for i, c := range r.contents {
		out[i] = strings.ReplaceAll(c, "{ns}", route.ID)
	}
	return out
}

// Items reads the names in a list.
func (*Routes) Items(body []byte) ([]string, error) {
	var list struct {
		Items []object `json:"items"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("kube: list: %w", err)
	}
	names := make([]string, 0, len(list.Items))
	for _, it := range list.Items {
		if it.Metadata.Name != "" {
			names = append(names, it.Metadata.Name)
		}
	}
	return names, nil
}
