package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"cheops/errcode"
)

// Handler serves the catalog's part of an agent's HTTP API:
//
//	GET /v1/resources[?service=S&site=S]  every resource this site holds
//	GET /v1/resources/{id}                one resource (404 when this site
//	                                      holds nothing of it)
//	GET /v1/watch                         server-sent events, one per change
func Handler(c *Catalog) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/resources", func(w http.ResponseWriter, r *http.Request) {
		list, err := c.List(r.Context(), Filter{Service: r.URL.Query().Get("service"), Site: r.URL.Query().Get("site")})
		if err != nil {
			errcode.Write(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		errcode.WriteJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("GET /v1/resources/{id}", func(w http.ResponseWriter, r *http.Request) {
		res, err := c.Get(r.Context(), r.PathValue("id"))
		if errors.Is(err, ErrNotFound) {
			errcode.Write(w, http.StatusNotFound, "not_found", fmt.Sprintf("no resource %q on site %s", r.PathValue("id"), c.Self()))
			return
		}
		if err != nil {
			errcode.Write(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		errcode.WriteJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /v1/watch", func(w http.ResponseWriter, r *http.Request) { serveWatch(c, w, r) })
	return mux
}

// serveWatch streams changes as server-sent events until the client goes
// away. A comment line every 15 s keeps proxies from closing the stream.
func serveWatch(c *Catalog, w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		errcode.Write(w, http.StatusInternalServerError, "internal", "streaming unsupported")
		return
	}
	changes := c.Watch(r.Context())
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": watching the catalog of %s\n\n", c.Self())
	flusher.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
			flusher.Flush()
		case ch, ok := <-changes:
			if !ok {
				return
			}
			writeChange(w, ch)
			// The changes already queued go out with it, in one write: a
			// merge after a heal queues hundreds at once, and a flush
			// each cost a write and a wake-up of the client per change.
			for queued := len(changes); queued > 0; queued-- {
				ch, ok := <-changes
				if !ok {
					break
				}
				writeChange(w, ch)
			}
			flusher.Flush()
		}
	}
}

// writeChange writes one change as a server-sent event.
func writeChange(w http.ResponseWriter, ch Change) {
	data, _ := json.Marshal(ch)
	fmt.Fprintf(w, "event: change\ndata: %s\n\n", data)
}
