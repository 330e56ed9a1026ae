package forward

import (
	"crypto/tls"
	"net/http"
	"net/url"
	"strings"
)

// Routes tells the forwarder where a service's resources are in its
// request paths and how they are named, when the default template
// /{collection}/{id} with ids chosen by each site's application does not
// fit (package kube implements it for Kubernetes API servers).
//
// A service with Routes is client-named: the client gives a resource its
// name in the creating request (Kubernetes' metadata.name), every site
// stores it under that name, and the name in later paths is the same on
// every site. No body is rewritten; the catalog records the resource with
// the same local id on every site of its replica set — the item's path
// (Route.Key) — and finds it again from a path with Catalog.LookupLocal.
//
// Implementations must be safe for concurrent use and must not block.
type Routes interface {
	// Route splits a path inside the service (unescaped, without its
	// query). A path that is no resource (discovery, OpenAPI) has an
	// empty Collection and is proxied to one site as it is.
	Route(path string) Route
	// Name reads the name a create's body (or its answer) gives the
	// resource; false when it gives none (the server will pick one).
	Name(body []byte) (string, bool)
	// Stream reports whether the answer to r is a stream (a watch) to be
	// passed on as it arrives, never buffered.
	Stream(r *http.Request) bool
	// Merge joins the answers of several sites to a read of one
	// collection (a cross read): answers are in site order, each a 2xx.
	Merge(r *http.Request, answers []SiteAnswer) (body []byte, contentType string, err error)
	// Copy turns one site's copy of a resource, as its application
	// answered a GET of it, into the body that creates it on another
	// site (attach): fields the server sets are stripped.
	Copy(body []byte) ([]byte, error)
}

// Container is implemented by Routes whose resources hold others (a
// Kubernetes namespace holds configmaps and deployments): attaching such
// a resource to a site copies what it holds there too.
type Container interface {
	// Contents lists the collections whose items belong to the resource
	// at route (e.g. /api/v1/namespaces/ns/configmaps for namespace ns).
	Contents(route Route) []string
	// Items reads the names in a GET answer of one of those collections.
	Items(body []byte) ([]string, error)
}

// Namer is implemented by Routes whose servers take a name chosen by the
// client but do not require one (Glance's image id): a create that
// carries none is given one before it is sent to any site, so that every
// site stores the resource under the same name.
type Namer interface {
	// Assign returns the body with a name set (the body as it is when it
	// names the resource already) and the name.
	Assign(body []byte) ([]byte, string, error)
}

// Negotiator is implemented by Routes that adjust the headers of every
// request sent to the application (the kube routes ask for JSON only).
type Negotiator interface {
	Outgoing(h http.Header)
}

// Route is where a path points inside a service.
type Route struct {
	Collection string // "/api/v1/namespaces/web/configmaps"; empty for a path that is no resource
	ID         string // the item's id or name; empty for the collection
	Rest       string // after the id: "/status", "/scale"
}

// Key is the item's path, which identifies a client-named resource in
// the catalog (its local id on every site).
func (r Route) Key() string {
	if r.ID == "" {
		return ""
	}
	return r.Collection + "/" + r.ID
}

// SiteAnswer is one site's answer to a cross read.
type SiteAnswer struct {
	Site   string
	Header http.Header
	Body   []byte
}

// Upstream says how to reach a service's application on this site beyond
// its URL: credentials and TLS.
type Upstream struct {
	// Token, when set, is sent as "Authorization: Bearer <token>" on every
	// request to the application, in place of whatever the client sent
	// (clients authenticate to the agent, the agent to its application).
	Token string
	// TLS configures HTTPS to the application (a CA pool, or
	// InsecureSkipVerify); nil means Go's defaults.
	TLS *tls.Config
}

// routeOf parses a path with the service's routes.
func (s Service) routeOf(path string) route {
	if s.Routes == nil {
		return parseRoute(path)
	}
	r := s.Routes.Route(path)
	return route{collection: r.Collection, id: r.ID, rest: r.Rest, named: true, other: r.Collection == ""}
}

// key is the catalog's local id of a client-named item.
func (r route) key() string {
	return Route{Collection: r.collection, ID: r.id}.Key()
}

// withID shows the global id in a default service's answer; a
// client-named service's answers are never rewritten.
func (s Service) withID(body []byte, id string) []byte {
	if s.Routes != nil {
		return body
	}
	return withID(body, s.IDField, id)
}

// createdID is the local id a site's answer to a create gives the
// resource: the id field for a default service, the item's key for a
// client-named one.
func (s Service) createdID(r route, body []byte) (string, bool) {
	if s.Routes == nil {
		return localID(body, s.IDField)
	}
	name, ok := s.Routes.Name(body)
	if !ok {
		return "", false
	}
	return route{collection: r.collection, id: name}.key(), true
}

// The content type of a recorded operation, when it is not JSON, travels
// in its path's fragment (never sent to an application), so that a site
// executing it later (replica's catch-up) sends the body as the client did:
// a Kubernetes PATCH is a merge, strategic merge, JSON or apply patch
// according to its content type alone.
const fragmentType = "#content-type="

// opPath is the path an operation is recorded with.
func opPath(path, contentType string) string {
	if contentType == "" || contentType == "application/json" {
		return path
	}
	return path + fragmentType + url.QueryEscape(contentType)
}

// splitOpPath undoes opPath: the path to send and the content type.
func splitOpPath(path string) (string, string) {
	p, frag, ok := strings.Cut(path, fragmentType)
	if !ok {
		return path, "application/json"
	}
	ct, err := url.QueryUnescape(frag)
	if err != nil {
		return p, "application/json"
	}
	return p, ct
}
