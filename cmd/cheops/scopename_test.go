package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"cheops/agent"
	"cheops/errcode"
)

// TestScopeDefineLsUndefine drives the named-scope commands against a
// stand-in of the agent's /v1/scopes API.
func TestScopeDefineLsUndefine(t *testing.T) {
	var mu sync.Mutex
	names := map[string]string{"eu": "{glance: paris & berlin}"}
	var sent []string
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/scopes/{name}", func(w http.ResponseWriter, r *http.Request) {
		var def agent.ScopeDefinition
		json.NewDecoder(r.Body).Decode(&def)
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, r.PathValue("name")+"="+def.Scope)
		names[r.PathValue("name")] = def.Scope
		errcode.WriteJSON(w, http.StatusOK, agent.NamedScope{Name: r.PathValue("name"), Scope: def.Scope, Source: agent.ScopeFromAPI})
	})
	mux.HandleFunc("GET /v1/scopes", func(w http.ResponseWriter, r *http.Request) {
		errcode.WriteJSON(w, http.StatusOK, []agent.NamedScope{{Name: "eu", Scope: names["eu"], Source: agent.ScopeFromConfig}, {Name: "r", Scope: names["r"], Source: agent.ScopeFromAPI}})
	})
	mux.HandleFunc("DELETE /v1/scopes/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") == "eu" {
			errcode.Write(w, http.StatusBadRequest, "bound_by_config", "configured")
			return
		}
		errcode.WriteJSON(w, http.StatusOK, agent.NamedScope{Name: "r", Scope: "{glance: rome}", Source: agent.ScopeFromAPI})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	out, code := run(t, "scope", "define", "r", "{glance:rome}", "--agent", srv.URL)
	if code != 0 || out != "r = {glance:rome}\n" || len(sent) != 1 || sent[0] != "r={glance:rome}" {
		t.Fatalf("define: %d %q, sent %v", code, out, sent)
	}
	if _, code := run(t, "scope", "define", "r", "{glance: ", "--agent", srv.URL); code != 2 || len(sent) != 1 {
		t.Fatalf("a bad scope: exit %d, sent %v", code, sent)
	}
	out, code = run(t, "scope", "ls", "--agent", srv.URL)
	if code != 0 || !strings.Contains(out, "eu    config  {glance: paris & berlin}") || !strings.Contains(out, "r     api     {glance:rome}") {
		t.Fatalf("ls: %d\n%s", code, out)
	}
	if out, code := run(t, "scope", "undefine", "r", "--agent", srv.URL); code != 0 || out != "undefined r (was {glance: rome})\n" {
		t.Fatalf("undefine: %d %q", code, out)
	}
	if _, msg, code := runErr(t, "scope", "undefine", "eu", "--agent", srv.URL); code != 2 || !strings.Contains(msg, "bound_by_config") {
		t.Fatalf("undefine a configured name: %d %q", code, msg)
	}
}
