package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/scope"
)

// Errors of Attach and Detach.
var (
	ErrAlreadyThere = errors.New("forward: the site already holds the resource")
	ErrNotThere     = errors.New("forward: the site does not hold the resource")
	ErrLastSite     = errors.New("forward: a resource keeps at least one site")
)

// Attach extends a resource to another site: its current state is read
// from this site's copy and created on the new site's application, and the
// site joins the resource's replica set (and catalog group), so later
// writes reach it. This site must hold the resource.
func (f *Forwarder) Attach(ctx context.Context, id, site string) (catalog.Resource, error) {
	res, err := f.cfg.Catalog.Get(ctx, id)
	if err != nil {
		return res, err
	}
	if slices.Contains(res.Sites, site) {
		return res, fmt.Errorf("%w: %s holds %s", ErrAlreadyThere, site, id)
	}
	if _, known := f.cfg.Membership.View().Sites[site]; !known {
		return res, fmt.Errorf("%w: %q", scope.ErrUnknownSite, site)
	}
	self := f.cfg.Membership.Site()
	local := res.PerSite[self].LocalID
	if local == "" {
		return res, fmt.Errorf("%w: this site has no copy of %s to send", ErrNotThere, id)
	}
	svc, ok := f.services[res.Service]
	if !ok {
		return res, fmt.Errorf("%w: %q", ErrUnknownService, res.Service)
	}
	newLocal, _, _, err := f.copyTo(ctx, svc, res.Collection, local, site)
	if err != nil {
		return res, fmt.Errorf("forward: attach %s: %w", id, err)
	}
	locals := map[string]string{site: newLocal}
	for s, v := range res.PerSite {
		locals[s] = v.LocalID
	}
	if err := f.cfg.Catalog.Rehome(ctx, id, append(slices.Clone(res.Sites), site), locals); err != nil {
		return res, err
	}
	if err := f.attachContents(ctx, svc, res, local, site); err != nil {
		return res, fmt.Errorf("forward: attach what %s holds: %w", id, err)
	}
	return f.cfg.Catalog.Get(ctx, id)
}

// Detach removes a site from a resource's replica set; with purge, its
// application's copy is deleted too (otherwise it is left as it is, no
// longer replicated). This site must stay in the set.
func (f *Forwarder) Detach(ctx context.Context, id, site string, purge bool) (catalog.Resource, error) {
	res, err := f.cfg.Catalog.Get(ctx, id)
	if err != nil {
		return res, err
	}
	if !slices.Contains(res.Sites, site) {
		return res, fmt.Errorf("%w: %s does not hold %s", ErrNotThere, site, id)
	}
	rest := slices.DeleteFunc(slices.Clone(res.Sites), func(s string) bool { return s == site })
	if len(rest) == 0 {
		return res, ErrLastSite
	}
	if purge {
		svc := f.services[res.Service]
		r, _ := http.NewRequestWithContext(ctx, http.MethodDelete, "/", nil)
		req := &request{r: r, svc: svc, scope: &scope.Scope{Bindings: []scope.Binding{{Expr: scope.Site{Name: site}}}}}
		path := svc.itemPath(res.Collection, res.PerSite[site].LocalID)
		if out := f.execute(ctx, site, req, http.MethodDelete, path, nil); !out.ok() && out.status != http.StatusNotFound {
			return res, fmt.Errorf("forward: delete the copy on %s: %d %v", site, out.status, out.err)
		}
	}
	locals := map[string]string{}
	for s, v := range res.PerSite {
		locals[s] = v.LocalID
	}
	if err := f.cfg.Catalog.Rehome(ctx, id, rest, locals); err != nil {
		return res, err
	}
	return f.cfg.Catalog.Get(ctx, id)
}

// ResourceHandler serves POST /v1/resources/{id}/attach and /detach with
// a body {"site": "...", "delete": false}.
func (f *Forwarder) ResourceHandler() http.Handler {
	mux := http.NewServeMux()
	handle := func(detach bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var in struct {
				Site   string `json:"site"`
				Delete bool   `json:"delete"`
			}
			data, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
			if err != nil || json.Unmarshal(data, &in) != nil || in.Site == "" {
				writeError(w, http.StatusBadRequest, "bad_input", `body must be {"site": "NAME"}`)
				return
			}
			var res catalog.Resource
			if detach {
				res, err = f.Detach(r.Context(), r.PathValue("id"), in.Site, in.Delete)
			} else {
				res, err = f.Attach(r.Context(), r.PathValue("id"), in.Site)
			}
			switch {
			case err == nil:
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(res)
			case errors.Is(err, catalog.ErrNotFound):
				writeError(w, http.StatusNotFound, "not_found", err.Error())
			case errors.Is(err, scope.ErrUnknownSite):
				writeError(w, http.StatusBadRequest, errcode.UnknownSite, err.Error())
			case errors.Is(err, ErrAlreadyThere), errors.Is(err, ErrNotThere),
				errors.Is(err, ErrLastSite), errors.Is(err, catalog.ErrInvalid):
				writeError(w, http.StatusBadRequest, "bad_input", err.Error())
			default:
				writeError(w, http.StatusBadGateway, "site_failed", err.Error())
			}
		}
	}
	mux.HandleFunc("POST /v1/resources/{id}/attach", handle(false))
	mux.HandleFunc("POST /v1/resources/{id}/detach", handle(true))
	return mux
}
