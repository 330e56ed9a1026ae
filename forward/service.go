package forward

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"cheops/scope"
)

// Service is an application behind the agent: a name, the base URL of
// this site's instance, and how its resources are found.
type Service struct {
	Name string
	URL  *url.URL
	// DefaultScope places requests that carry no scope; empty means the
	// local site.
	DefaultScope string
	// IDField is the field of a created resource's JSON body that holds
	// its id (default "id").
	IDField string
	// Policies maps an HTTP method to the consistency policy of this
	// service's updates (catalog.PolicyReplace, PolicyCommute,
	// PolicyOrdered); methods not listed take catalog.DefaultPolicy.
	Policies map[string]string
	// Routes, when set, replaces the default route template and makes
	// the service client-named (see Routes).
	Routes Routes
	// Upstream holds the credentials and TLS settings of this site's
	// instance.
	Upstream Upstream
}

// ParsePolicy reads "SERVICE:METHOD=POLICY" (as --policy takes it).
func ParsePolicy(s string) (service, method, policy string, err error) {
	head, policy, ok := strings.Cut(s, "=")
	service, method, ok2 := strings.Cut(head, ":")
	method = strings.ToUpper(method)
	switch {
	case !ok || !ok2 || service == "" || method == "":
		return "", "", "", fmt.Errorf("%w: policy %q is not SERVICE:METHOD=POLICY", ErrBadService, s)
	case policy != "replace" && policy != "commute" && policy != "ordered":
		return "", "", "", fmt.Errorf("%w: policy %q: want replace, commute or ordered", ErrBadService, policy)
	}
	return service, method, policy, nil
}

// ErrBadService is wrapped by ParseService's errors.
var ErrBadService = errors.New("forward: bad service")

// ParseService reads "NAME=URL" (as --service takes it).
func ParseService(s string) (Service, error) {
	name, raw, ok := strings.Cut(s, "=")
	if !ok || name == "" || raw == "" {
		return Service{}, fmt.Errorf("%w: %q is not NAME=URL", ErrBadService, s)
	}
	if err := scope.CheckName("service", name); err != nil {
		return Service{}, fmt.Errorf("%w: %w", ErrBadService, err)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Service{}, fmt.Errorf("%w: %q is not an http(s) URL", ErrBadService, raw)
	}
	return Service{Name: name, URL: u, IDField: "id"}, nil
}

// route is where a request's path points inside a service.
type route struct {
	collection string // "/posts"
	id         string // "7", or a global id; empty for the collection
	rest       string // anything after the id
	named      bool   // the client names items: id is the same on every site
	other      bool   // no resource (discovery): proxied as it is
}

// parseRoute applies the default route template /{collection}/{id}.
func parseRoute(path string) route {
	parts := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 3)
	r := route{collection: "/" + parts[0]}
	if len(parts) > 1 {
		r.id = parts[1]
	}
	if len(parts) > 2 {
		r.rest = "/" + parts[2]
	}
	return r
}

func (r route) path(id string) string {
	if r.named {
		// A client-named item has its name on every site.
		id = r.id
	}
	if id == "" {
		return r.collection
	}
	return r.collection + "/" + url.PathEscape(id) + r.rest
}
