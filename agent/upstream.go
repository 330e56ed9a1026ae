package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"cheops/forward"
	"cheops/glance"
	"cheops/kube"
)

// Kinds of service (ServiceOptions.Kind).
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

// ServiceOptions says how to reach and read one service beyond its URL.
type ServiceOptions struct {
	// Kind is KindREST (empty), KindKube or KindGlance.
	Kind string `json:"kind,omitempty"`
	// Token is sent to this site's instance as a bearer token in place of
	// the client's Authorization (--service-token NAME=@FILE).
	Token string `json:"-"`
	// CAFile holds the PEM certificates that sign this site's instance's
	// HTTPS certificate (--service-ca NAME=FILE).
	CAFile string `json:"ca_file,omitempty"`
	// Insecure skips the verification of the instance's certificate
	// (--service-insecure NAME): self-signed test clusters only.
	Insecure bool `json:"insecure,omitempty"`
}

// buildService turns a configured service into the forwarder's.
func (c *Config) buildService(name, base string) (forward.Service, error) {
	svc, err := forward.ParseService(name + "=" + base)
	if err != nil {
		return svc, err
	}
	svc.Policies = c.Policies[name]
	opt := c.ServiceOptions[name]
	switch opt.Kind {
	case "", KindREST:
	case KindKube:
		svc.Routes = kube.New(nil)
	case KindGlance:
		svc.Routes = glance.Routes{}
	default:
		return svc, fmt.Errorf("%w: service %s: kind %q: want %s, %s or %s", ErrBadConfig, name, opt.Kind, KindREST, KindKube, KindGlance)
	}
	svc.Upstream.Token = opt.Token
	if opt.CAFile != "" || opt.Insecure {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: opt.Insecure} //nolint:gosec // opt-in per service
		if opt.CAFile != "" {
			pem, err := os.ReadFile(opt.CAFile)
			if err != nil {
				return svc, fmt.Errorf("%w: service %s: CA file: %v", ErrBadConfig, name, err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return svc, fmt.Errorf("%w: service %s: no PEM certificate in %s", ErrBadConfig, name, opt.CAFile)
			}
		}
		svc.Upstream.TLS = cfg
	}
	return svc, nil
}
