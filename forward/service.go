package forward

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"cheops/catalog"
	"cheops/scope"
)

// Kinds of service (Service.Kind).
const (
	// KindREST is the default: routes /{collection}/{id}, ids chosen by
	// each site's application.
	KindREST = "rest"
	// KindKube is a Kubernetes API server: routes of package kube, objects
	// named by their clients, watches streamed.
	KindKube = "kube"
	// KindGlance is OpenStack Glance's v2 API: routes of package glance,
	// images named by one id on every site, image data streamed to every
	// replica.
	KindGlance = "glance"
)

// Service is an application behind the agent: a name, the base URL of
// this site's instance, and how its resources are found. It is built
// once, from the command line's --service and the flags that qualify it
// (or in code), and passed as it is to the agent and the forwarder;
// Validate is the one check of it.
type Service struct {
	Name string
	URL  *url.URL
	// Kind is KindREST (or empty), KindKube or KindGlance. Packages kube
	// and glance build on this one: the agent gives a service of their
	// kind its Routes (and a glance service its image-data path).
	Kind string
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

// ErrBadService is wrapped by the errors of NewService, ParseService,
// ParsePolicy, UpstreamTLS and Validate.
var ErrBadService = errors.New("forward: bad service")

// NewService returns the service name at rawURL, of kind REST, checked
// (Validate).
func NewService(name, rawURL string) (Service, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Service{}, fmt.Errorf("%w: %s: %q is not an http(s) URL", ErrBadService, name, rawURL)
	}
	s := Service{Name: name, URL: u, IDField: "id"}
	return s, s.Validate()
}

// ParseService reads "NAME=URL" (as --service takes it).
func ParseService(s string) (Service, error) {
	name, raw, ok := strings.Cut(s, "=")
	if !ok || name == "" || raw == "" {
		return Service{}, fmt.Errorf("%w: %q is not NAME=URL", ErrBadService, s)
	}
	return NewService(name, raw)
}

// ParsePolicy reads "SERVICE:METHOD=POLICY" (as --policy takes it).
func ParsePolicy(s string) (service, method, policy string, err error) {
	head, policy, ok := strings.Cut(s, "=")
	service, method, ok2 := strings.Cut(head, ":")
	method = strings.ToUpper(method)
	if !ok || !ok2 || service == "" || method == "" {
		return "", "", "", fmt.Errorf("%w: policy %q is not SERVICE:METHOD=POLICY", ErrBadService, s)
	}
	if err := checkPolicy(policy); err != nil {
		return "", "", "", err
	}
	return service, method, policy, nil
}

func checkPolicy(policy string) error {
	switch policy {
	case catalog.PolicyReplace, catalog.PolicyCommute, catalog.PolicyOrdered:
		return nil
	}
	return fmt.Errorf("%w: policy %q: want %s, %s or %s", ErrBadService, policy, catalog.PolicyReplace, catalog.PolicyCommute, catalog.PolicyOrdered)
}

// UpstreamTLS is the TLS configuration of an HTTPS upstream whose
// certificate is signed by the PEM certificates in caFile (none: the
// system's roots), or not verified at all when insecure (self-signed test
// clusters only).
func UpstreamTLS(caFile string, insecure bool) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure} //nolint:gosec // opt-in per service
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: CA file: %w", ErrBadService, err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: no PEM certificate in %s", ErrBadService, caFile)
	}
	return cfg, nil
}

// Validate reports the first problem with the service: its name (the
// scope grammar's SERVICE token), its URL (absolute http or https), its
// kind, its policies and its default scope. The errors wrap
// ErrBadService.
func (s Service) Validate() error {
	if err := scope.CheckName("service", s.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrBadService, err)
	}
	if s.URL == nil || (s.URL.Scheme != "http" && s.URL.Scheme != "https") || s.URL.Host == "" {
		return fmt.Errorf("%w: %s: the URL must be http:// or https://", ErrBadService, s.Name)
	}
	switch s.Kind {
	case "", KindREST, KindKube, KindGlance:
	default:
		return fmt.Errorf("%w: %s: kind %q: want %s, %s or %s", ErrBadService, s.Name, s.Kind, KindREST, KindKube, KindGlance)
	}
	for method, policy := range s.Policies {
		if method == "" || method != strings.ToUpper(method) {
			return fmt.Errorf("%w: %s: policy for method %q: want an upper-case HTTP method", ErrBadService, s.Name, method)
		}
		if err := checkPolicy(policy); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	if s.DefaultScope != "" {
		if _, err := scope.Parse(s.DefaultScope); err != nil {
			return fmt.Errorf("%w: %s: default scope: %w", ErrBadService, s.Name, err)
		}
	}
	return nil
}

// CheckServices validates every service (Validate) and that no name is
// given twice.
func CheckServices(services []Service) error {
	seen := make(map[string]bool, len(services))
	for _, s := range services {
		if err := s.Validate(); err != nil {
			return err
		}
		if seen[s.Name] {
			return fmt.Errorf("%w: %s given twice", ErrBadService, s.Name)
		}
		seen[s.Name] = true
	}
	return nil
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
