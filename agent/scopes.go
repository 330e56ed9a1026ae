package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"

	"cheops/errcode"
	"cheops/scope"
)

// Named scopes let clients that take only a base URL (the openstack CLI,
// most SDKs) carry a scope without percent signs: /s/{name}/svc/{service}/…
// runs as /scope/{the scope named name}/svc/{service}/… would.
//
// Design note: names are resolved locally, by the agent the client calls.
// A named scope is never replicated: the agent that receives a request
// turns the name into the scope it stands for before planning, and every
// site the request reaches gets the scope itself (canonical, in
// X-Cheops-Scope), never the name. So a name means what the agent the
// client talks to says it means, and a site never has to agree with
// another on a table of names. Operators who want one name on every site
// put it in every agent's configuration (--scope-name, or the config
// file's "scope-name" list).

// ScopesFile holds, in the data directory, the names defined through the
// API (PUT /v1/scopes/{name}); names from the configuration are not
// written there.
const ScopesFile = "scopes.json"

// Named-scope errors.
var (
	// ErrUnknownScope: no scope has that name on this agent.
	ErrUnknownScope = errors.New("agent: unknown scope name")
	// ErrConfiguredScope: the name is defined by the agent's
	// configuration, which only a restart with another configuration
	// changes.
	ErrConfiguredScope = errors.New("agent: scope name defined by the configuration")
	// ErrBadScopeName: a name outside [A-Za-z][A-Za-z0-9_.-]*.
	ErrBadScopeName = errors.New("agent: bad scope name")
)

// NamedScope is one element of GET /v1/scopes and the answer of
// PUT /v1/scopes/{name}.
type NamedScope struct {
	Name  string `json:"name"`
	Scope string `json:"scope"` // canonical
	// Source is "config" (--scope-name, fixed) or "api" (defined with
	// PUT /v1/scopes/{name}, kept in DATA/scopes.json).
	Source string `json:"source"`
}

// Sources of a named scope.
const (
	ScopeFromConfig = "config"
	ScopeFromAPI    = "api"
)

// ParseScopeName reads "NAME=SCOPE" (as --scope-name takes it).
func ParseScopeName(s string) (name, text string, err error) {
	name, text, ok := strings.Cut(s, "=")
	if !ok || name == "" || strings.TrimSpace(text) == "" {
		return "", "", fmt.Errorf("%w: %q is not NAME=SCOPE", ErrBadScopeName, s)
	}
	return strings.TrimSpace(name), text, nil
}

// canonicalNamed checks a name and its scope and returns the scope's
// canonical form.
func canonicalNamed(name, text string) (string, error) {
	if !scope.ValidName(name) {
		return "", fmt.Errorf("%w: %q must match %s", ErrBadScopeName, name, scope.NamePattern)
	}
	s, err := scope.Parse(text)
	if err != nil {
		return "", fmt.Errorf("scope %s: %w", name, err)
	}
	return s.String(), nil
}

// namedScopes is the agent's table of named scopes. Safe for concurrent
// use.
type namedScopes struct {
	path       string            // DATA/scopes.json; "" keeps nothing
	configured map[string]string // name → canonical scope, fixed
	mu         sync.Mutex
	defined    map[string]string // name → canonical scope, from the API
}

// loadNamedScopes checks the configured names and reads those the API
// defined in earlier runs from path (a missing file is an empty table).
func loadNamedScopes(path string, configured map[string]string) (*namedScopes, error) {
	n := &namedScopes{path: path, configured: map[string]string{}, defined: map[string]string{}}
	for name, text := range configured {
		c, err := canonicalNamed(name, text)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadConfig, err)
		}
		n.configured[name] = c
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return n, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent: named scopes: %w", err)
	}
	var saved map[string]string
	if err := json.Unmarshal(data, &saved); err != nil {
		return nil, fmt.Errorf("agent: named scopes %s: %w", path, err)
	}
	for name, text := range saved {
		c, err := canonicalNamed(name, text)
		if err != nil {
			return nil, fmt.Errorf("agent: named scopes %s: %w", path, err)
		}
		if _, fixed := n.configured[name]; !fixed {
			n.defined[name] = c
		}
	}
	return n, nil
}

// Lookup returns the canonical scope a name stands for.
func (n *namedScopes) Lookup(name string) (string, bool) {
	if c, ok := n.configured[name]; ok {
		return c, true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.defined[name]
	return c, ok
}

// List returns every named scope, by name.
func (n *namedScopes) List() []NamedScope {
	n.mu.Lock()
	out := make([]NamedScope, 0, len(n.configured)+len(n.defined))
	for name, c := range n.defined {
		out = append(out, NamedScope{Name: name, Scope: c, Source: ScopeFromAPI})
	}
	n.mu.Unlock()
	for name, c := range n.configured {
		out = append(out, NamedScope{Name: name, Scope: c, Source: ScopeFromConfig})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Define gives name the scope text (replacing an earlier API definition)
// and saves the table.
func (n *namedScopes) Define(name, text string) (NamedScope, error) {
	c, err := canonicalNamed(name, text)
	if err != nil {
		return NamedScope{}, err
	}
	if _, fixed := n.configured[name]; fixed {
		return NamedScope{}, fmt.Errorf("%w: %s", ErrConfiguredScope, name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	old, had := n.defined[name]
	n.defined[name] = c
	if err := n.saveLocked(); err != nil {
		if had {
			n.defined[name] = old
		} else {
			delete(n.defined, name)
		}
		return NamedScope{}, err
	}
	return NamedScope{Name: name, Scope: c, Source: ScopeFromAPI}, nil
}

// Undefine removes a name the API defined.
func (n *namedScopes) Undefine(name string) (NamedScope, error) {
	if _, fixed := n.configured[name]; fixed {
		return NamedScope{}, fmt.Errorf("%w: %s", ErrConfiguredScope, name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.defined[name]
	if !ok {
		return NamedScope{}, fmt.Errorf("%w: %q", ErrUnknownScope, name)
	}
	delete(n.defined, name)
	if err := n.saveLocked(); err != nil {
		n.defined[name] = c
		return NamedScope{}, err
	}
	return NamedScope{Name: name, Scope: c, Source: ScopeFromAPI}, nil
}

func (n *namedScopes) saveLocked() error {
	if n.path == "" {
		return nil
	}
	data, err := json.MarshalIndent(n.defined, "", "  ")
	if err != nil {
		return fmt.Errorf("agent: named scopes: %w", err)
	}
	if err := writeFileAtomic(n.path, append(data, '\n')); err != nil {
		return fmt.Errorf("agent: named scopes: %w", err)
	}
	return nil
}

// scopedPath turns the escaped path of a /s/{name}/… request into the
// /scope/{scope}/… path it stands for. A pure function of the path and
// the table.
func scopedPath(escaped string, lookup func(string) (string, bool)) (string, error) {
	rest, ok := strings.CutPrefix(escaped, "/s/")
	if !ok {
		return "", fmt.Errorf("%w: %s is no /s/{name}/ path", ErrUnknownScope, escaped)
	}
	name, after, _ := strings.Cut(rest, "/")
	c, ok := lookup(name)
	if !ok {
		return "", fmt.Errorf("%w: %q (GET /v1/scopes lists this agent's names)", ErrUnknownScope, name)
	}
	return "/scope/" + url.PathEscape(c) + "/" + after, nil
}

// serveNamed serves /s/{name}/svc/…: the request runs as its /scope/ form.
func (a *Agent) serveNamed(w http.ResponseWriter, r *http.Request) {
	p, err := scopedPath(r.URL.EscapedPath(), a.scopes.Lookup)
	if err != nil {
		errcode.Write(w, http.StatusNotFound, errcode.UnknownScope, err.Error())
		return
	}
	plain, err := url.PathUnescape(p)
	if err != nil {
		errcode.Write(w, http.StatusBadRequest, errcode.BadInput, fmt.Sprintf("path: %v", err))
		return
	}
	r2 := new(http.Request)
	*r2 = *r
	r2.URL = new(url.URL)
	*r2.URL = *r.URL
	r2.URL.Path, r2.URL.RawPath = plain, p
	a.front.ServeHTTP(w, r2)
}

// listScopes serves GET /v1/scopes.
func (a *Agent) listScopes(w http.ResponseWriter, _ *http.Request) {
	errcode.WriteJSON(w, http.StatusOK, a.scopes.List())
}

// ScopeDefinition is the body of PUT /v1/scopes/{name}; a body that is
// not JSON is taken as the scope itself.
type ScopeDefinition struct {
	Scope string `json:"scope"`
}

// defineScope serves PUT /v1/scopes/{name}.
func (a *Agent) defineScope(w http.ResponseWriter, r *http.Request) {
	body, err := readSmall(r)
	if err != nil {
		errcode.Write(w, http.StatusBadRequest, errcode.BadInput, err.Error())
		return
	}
	text := string(body)
	var def ScopeDefinition
	if json.Unmarshal(body, &def) == nil && def.Scope != "" {
		text = def.Scope
	}
	ns, err := a.scopes.Define(r.PathValue("name"), text)
	if err != nil {
		a.scopeError(w, err)
		return
	}
	a.log.Info("scope defined", "name", ns.Name, "scope", ns.Scope)
	errcode.WriteJSON(w, http.StatusOK, ns)
}

// undefineScope serves DELETE /v1/scopes/{name}.
func (a *Agent) undefineScope(w http.ResponseWriter, r *http.Request) {
	ns, err := a.scopes.Undefine(r.PathValue("name"))
	if err != nil {
		a.scopeError(w, err)
		return
	}
	a.log.Info("scope undefined", "name", ns.Name)
	errcode.WriteJSON(w, http.StatusOK, ns)
}

func (a *Agent) scopeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrUnknownScope):
		errcode.Write(w, http.StatusNotFound, errcode.UnknownScope, err.Error())
	case errors.Is(err, ErrConfiguredScope):
		errcode.Write(w, http.StatusBadRequest, errcode.BoundByConfig, err.Error())
	case errors.Is(err, ErrBadScopeName):
		errcode.Write(w, http.StatusBadRequest, errcode.BadInput, err.Error())
	case errcode.Of(err) != "":
		errcode.Write(w, http.StatusBadRequest, errcode.Of(err), err.Error())
	default:
		errcode.Write(w, http.StatusInternalServerError, errcode.Internal, err.Error())
	}
}

// maxScopeBody bounds a scope definition's body (a scope is at most
// 64 KiB before the canonical limit applies).
const maxScopeBody = 64 << 10

func readSmall(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxScopeBody+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxScopeBody {
		return nil, fmt.Errorf("body over %d bytes", maxScopeBody)
	}
	return body, nil
}
