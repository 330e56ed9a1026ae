package forward

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServiceChecks: a service is parsed and checked by one set of
// functions, whose errors wrap ErrBadService and say what is wrong.
func TestServiceChecks(t *testing.T) {
	if s, err := ParseService("posts=http://127.0.0.1:3000"); err != nil || s.Name != "posts" || s.URL.Host != "127.0.0.1:3000" || s.IDField != "id" {
		t.Fatalf("ParseService = %+v, %v", s, err)
	}
	u := &url.URL{Scheme: "https", Host: "k8s:6443"}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"no =", second(ParseService("posts")), "NAME=URL"},
		{"no URL", second(ParseService("posts=")), "NAME=URL"},
		{"bad URL", second(ParseService("posts=localhost:80")), "http(s) URL"},
		{"bad name", second(ParseService("9p=http://x")), "service"},
		{"no URL at all", Service{Name: "posts"}.Validate(), "http:// or https://"},
		{"bad kind", Service{Name: "k", URL: u, Kind: "helm"}.Validate(), `kind "helm"`},
		{"bad policy", Service{Name: "k", URL: u, Policies: map[string]string{"PUT": "merge"}}.Validate(), `policy "merge"`},
		{"lower-case method", Service{Name: "k", URL: u, Policies: map[string]string{"put": "replace"}}.Validate(), "upper-case"},
		{"bad default scope", Service{Name: "k", URL: u, DefaultScope: "{k: &}"}.Validate(), "default scope"},
		{"twice", CheckServices([]Service{{Name: "k", URL: u}, {Name: "k", URL: u}}), "given twice"},
		{"policy syntax", fourth(ParsePolicy("posts=replace")), "SERVICE:METHOD=POLICY"},
		{"policy name", fourth(ParsePolicy("posts:PUT=merge")), `policy "merge"`},
	} {
		if !errors.Is(tc.err, ErrBadService) || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadService mentioning %q", tc.name, tc.err, tc.want)
		}
	}
	if err := (Service{Name: "k", URL: u, Kind: KindKube, Policies: map[string]string{"PATCH": "commute"}}).Validate(); err != nil {
		t.Fatal(err)
	}
	if svc, method, policy, err := ParsePolicy("posts:patch=commute"); err != nil || svc != "posts" || method != "PATCH" || policy != "commute" {
		t.Fatalf("ParsePolicy = %s %s %s %v", svc, method, policy, err)
	}
}

func TestUpstreamTLS(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(bad, []byte("nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := UpstreamTLS(bad, false); !errors.Is(err, ErrBadService) || !strings.Contains(err.Error(), "PEM") {
		t.Fatalf("not PEM: %v", err)
	}
	if _, err := UpstreamTLS(filepath.Join(dir, "none"), false); !errors.Is(err, ErrBadService) {
		t.Fatalf("missing: %v", err)
	}
	if cfg, err := UpstreamTLS("", true); err != nil || !cfg.InsecureSkipVerify {
		t.Fatalf("insecure: %+v %v", cfg, err)
	}
}

func second[T any](_ T, err error) error { return err }

func fourth(_, _, _ string, err error) error { return err }
