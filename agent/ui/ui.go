// Package ui is the agent's live web view: one page, embedded in the
// binary, that shows the sites (up/down, RTT) and the resources this site
// holds (scope, replica sites, pending operations), kept current from the
// agent's own API (/v1/sites, /v1/resources and the /v1/watch event stream).
package ui

import (
	_ "embed"
	"net/http"
)

//go:embed index.html
var page []byte

// Handler serves the page.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(page)
	})
}
