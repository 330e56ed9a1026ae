package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"time"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/replica"
	"cheops/scope"
)

// Placement changes: attach and detach.
//
// Design note — attach and detach are operations of the resource, run at
// the site they attach or detach by that site's executor, under the
// resource's lock, and stamped there (replica/place.go):
//
//  1. the site asked (the origin) checks the change against its catalog
//     (checkPlacement) and, for an attach, reads its own copy;
//  2. it sends the change to the target site as an operation (HeaderOp with
//     wireOp.Place): the target's executor makes or adopts the copy (attach)
//     or deletes and forgets it (detach --delete), and answers with the
//     copy's local id and a stamp of its clock read under the lock;
//  3. the origin writes the new replica set into the catalog with that
//     stamp as its version (catalog.Place): on every site the set with the
//     highest version wins, i.e. the change that ran last at the target.
//
// Any number of concurrent attaches of one resource to one site thus leave
// one copy there, and every site's catalog names it. A detach without
// --delete leaves the target's application alone: it needs no answer from
// the target (which may be down) and is stamped by the origin's clock; the
// version it writes is kept in Meta.Detached, so that a later attach of
// that site makes a new copy instead of adopting the one left behind.
// docs/consistency.md states the outcome of every race.

// Errors of Attach and Detach.
var (
	ErrAlreadyThere = errors.New("forward: the site already holds the resource")
	ErrNotThere     = errors.New("forward: the site does not hold the resource")
	ErrLastSite     = errors.New("forward: a resource keeps at least one site")
	ErrDetachSelf   = errors.New("forward: a site does not detach itself from a resource")
	// errPlaceRefused: the target site refused the change (its application
	// refused the copy or the deletion).
	errPlaceRefused = errors.New("forward: the site refused the change")
	// errPlaceUnknown: the change was sent and the target site did not
	// answer (it stopped, the connection broke): it may have run there.
	// Running it again is safe: an attach adopts the copy one cut short
	// made (replica.Executor.Attach), a detach --delete counts a copy
	// already gone as deleted.
	errPlaceUnknown = errors.New("forward: the site did not answer; the change may have run there, and running it again is safe")
)

// Kinds of placement change (wireOp.Place).
const (
	placeAttach = "attach"
	placeDetach = "detach"
)

// placed is a target site's answer to a placement change.
type placed struct {
	LocalID string            `json:"local_id,omitempty"`
	Stamp   catalog.Timestamp `json:"stamp"`
}

// checkPlacement says whether self may attach site to (attach) or detach
// it from a resource, as self's catalog shows it; known reports whether
// the membership knows site. Pure.
func checkPlacement(res catalog.Resource, self, site string, attach, known bool) error {
	in := slices.Contains(res.Sites, site)
	switch {
	case !in && !known:
		return fmt.Errorf("%w: %q", scope.ErrUnknownSite, site)
	case attach && in:
		return fmt.Errorf("%w: %s holds %s", ErrAlreadyThere, site, res.ID)
	case attach && res.PerSite[self].LocalID == "":
		return fmt.Errorf("%w: this site (%s) has no copy of %s to send", ErrNotThere, self, res.ID)
	case !attach && !in:
		return fmt.Errorf("%w: %s does not hold %s", ErrNotThere, site, res.ID)
	case !attach && site == self:
		return fmt.Errorf("%w: run the detach of %s on another site that holds %s", ErrDetachSelf, site, res.ID)
	case !attach && len(res.Sites) == 1:
		return ErrLastSite
	}
	return nil
}

// nextSites is the replica set after site is attached (appended) or
// detached (removed), in current's order. Pure.
func nextSites(current []string, site string, attach bool) []string {
	out := slices.DeleteFunc(slices.Clone(current), func(s string) bool { return s == site })
	if attach {
		out = append(out, site)
	}
	return out
}

// placementScope is the scope of a replica set: {service: a & b & c}, the
// scope shown for a resource once an attach or a detach changed where it
// is (the scope it was created with is kept as CreatedScope). Pure.
func placementScope(service string, sites []string) string {
	terms := make([]scope.Expr, len(sites))
	for i, s := range sites {
		terms[i] = scope.Site{Name: s}
	}
	var e scope.Expr = scope.All{Terms: terms}
	if len(terms) == 1 {
		e = terms[0]
	}
	return (&scope.Scope{Bindings: []scope.Binding{{Service: service, Expr: e}}}).String()
}

// Attach extends a resource to another site: this site's copy is read and
// sent to site, whose executor creates it there (or adopts the one a
// concurrent attach made), and site joins the resource's replica set (and
// catalog group), so later writes reach it. This site must hold a copy.
func (f *Forwarder) Attach(ctx context.Context, id, site string) (catalog.Resource, error) {
	// Once sent, the change is recorded even if the client goes away.
	ctx = context.WithoutCancel(ctx)
	res, err := f.cfg.Catalog.Get(ctx, id)
	if err != nil {
		return res, err
	}
	self := f.cfg.Membership.Site()
	_, known := f.cfg.Membership.View().Sites[site]
	if err := checkPlacement(res, self, site, true, known); err != nil {
		return res, err
	}
	svc, ok := f.services[res.Service]
	if !ok {
		return res, fmt.Errorf("%w: %q", ErrUnknownService, res.Service)
	}
	body, err := f.readCopy(ctx, svc, res.Collection, res.PerSite[self].LocalID)
	if err != nil {
		return res, fmt.Errorf("forward: attach %s: %w", id, err)
	}
	op := catalog.Operation{ID: catalog.NewID(time.Now()), Resource: id, Origin: self, At: f.cfg.Catalog.Clock().Now(),
		Method: http.MethodPost, Path: res.Collection, Body: body, Targets: []string{site}}
	p, err := f.placeAt(ctx, site, svc, wireOp{Op: op, Create: true, Collection: res.Collection, Place: placeAttach, Base: res.Detached[site]})
	if err != nil {
		return res, fmt.Errorf("forward: attach %s to %s: %w", id, site, err)
	}
	if err := f.move(ctx, id, site, true, p.LocalID, p.Stamp); err != nil {
		return res, fmt.Errorf("forward: attach %s to %s: %w", id, site, err)
	}
	f.log.Info("attached", "resource", id, "to", site, "local", p.LocalID, "version", p.Stamp)
	if err := f.attachContents(ctx, svc, res, res.PerSite[self].LocalID, site); err != nil {
		return res, fmt.Errorf("forward: attach what %s holds: %w", id, err)
	}
	return f.cfg.Catalog.Get(ctx, id)
}

// Detach removes a site from a resource's replica set; with purge, the
// site's executor deletes its copy first (the site must be reachable),
// otherwise its copy is left as it is, no longer replicated, and the site
// need not be reachable. This site must stay in the set.
func (f *Forwarder) Detach(ctx context.Context, id, site string, purge bool) (catalog.Resource, error) {
	ctx = context.WithoutCancel(ctx)
	res, err := f.cfg.Catalog.Get(ctx, id)
	if err != nil {
		return res, err
	}
	self := f.cfg.Membership.Site()
	_, known := f.cfg.Membership.View().Sites[site]
	if err := checkPlacement(res, self, site, false, known); err != nil {
		return res, err
	}
	svc, ok := f.services[res.Service]
	if !ok {
		return res, fmt.Errorf("%w: %q", ErrUnknownService, res.Service)
	}
	version := f.cfg.Catalog.Clock().Now()
	if purge {
		op := catalog.Operation{ID: catalog.NewID(time.Now()), Resource: id, Origin: self, At: version,
			Method: http.MethodDelete, Path: svc.itemPath(res.Collection, id), Targets: []string{site}}
		p, err := f.placeAt(ctx, site, svc, wireOp{Op: op, Collection: res.Collection, Place: placeDetach, Purge: true})
		if err != nil {
			return res, fmt.Errorf("forward: detach %s from %s: %w", id, site, err)
		}
		version = p.Stamp
	}
	if err := f.move(ctx, id, site, false, "", version); err != nil {
		return res, fmt.Errorf("forward: detach %s from %s: %w", id, site, err)
	}
	f.log.Info("detached", "resource", id, "from", site, "deleted", purge, "version", version)
	return f.cfg.Catalog.Get(ctx, id)
}

// move writes the replica set after site was attached (with its copy's
// local id) or detached, at version, over the catalog's current view of
// the resource (a change that arrived meanwhile is kept).
func (f *Forwarder) move(ctx context.Context, id, site string, attach bool, local string, version catalog.Timestamp) error {
	res, err := f.cfg.Catalog.Get(ctx, id)
	if err != nil {
		return err
	}
	sites := nextSites(res.Sites, site, attach)
	locals := map[string]string{}
	for s, v := range res.PerSite {
		if v.LocalID != "" {
			locals[s] = v.LocalID
		}
	}
	detached := maps.Clone(res.Detached)
	if attach {
		locals[site] = local
	} else {
		if detached == nil {
			detached = map[string]catalog.Timestamp{}
		}
		detached[site] = version
	}
	return f.cfg.Catalog.Place(ctx, id, catalog.Placement{Sites: sites, LocalIDs: locals,
		Scope: placementScope(res.Service, sites), Version: version, Detached: detached})
}

// placeAt sends a placement change to the target site's executor and
// returns its answer. errNotDelivered: the site could not be reached,
// nothing ran there; errPlaceUnknown: it was sent and not answered.
func (f *Forwarder) placeAt(ctx context.Context, site string, svc Service, wo wireOp) (placed, error) {
	r, err := http.NewRequestWithContext(ctx, wo.Op.Method, "/", nil)
	if err != nil {
		return placed{}, err
	}
	if len(wo.Op.Body) > 0 {
		r.Header.Set("Content-Type", "application/json")
	}
	req := &request{r: r, svc: svc, body: wo.Op.Body, scope: siteScope(site)}
	path, _ := splitOpPath(wo.Op.Path)
	out := f.execute(ctx, site, req, wo.Op.Method, path, http.Header{HeaderOp: {encodeOp(wo)}, HeaderResource: {wo.Op.Resource}})
	switch {
	case errors.Is(out.err, errNotDelivered):
		return placed{}, out.err
	case out.err != nil:
		return placed{}, fmt.Errorf("%w: %s: %v", errPlaceUnknown, site, out.err)
	}
	if out.status != http.StatusOK {
		return placed{}, fmt.Errorf("%w: %s answered %d: %s", errPlaceRefused, site, out.status, out.body)
	}
	var p placed
	if err := json.Unmarshal(out.body, &p); err != nil || p.Stamp.IsZero() || (wo.Place == placeAttach && p.LocalID == "") {
		return placed{}, fmt.Errorf("%w: %s answered %q", errPlaceRefused, site, out.body)
	}
	if err := f.cfg.Catalog.Clock().Observe(p.Stamp); err != nil {
		return placed{}, fmt.Errorf("%w: %s: %v", errPlaceRefused, site, err)
	}
	return p, nil
}

// servePlace runs a placement change another site sent (wireOp.Place)
// through this site's executor and answers with a placed.
func (f *Forwarder) servePlace(w http.ResponseWriter, req *request, wo wireOp) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(req.r.Context()), f.cfg.SiteTimeout)
	defer cancel()
	self := f.cfg.Membership.Site()
	stamp := func() catalog.Timestamp { return f.cfg.Catalog.Clock().Now() }
	var p placed
	switch wo.Place {
	case placeAttach:
		j := replica.Job{Op: wo.Op, Service: req.svc.Name, Create: true, Collection: wo.Collection}
		name := ""
		if req.svc.Routes != nil {
			name, _ = f.LocalID(req.svc.Name, wo.Collection, wo.Op.Body)
		}
		r, at := f.exec.Attach(ctx, j, wo.Base, name, stamp)
		switch {
		case r.Err != nil:
			w.Header().Set(HeaderOutcome, catalog.OutcomePending)
			errcode.Write(w, http.StatusServiceUnavailable, "not_yet", r.Err.Error())
			return
		case r.Failed != "":
			errcode.Write(w, http.StatusBadGateway, errcode.SiteFailed, fmt.Sprintf("%s's application refused the copy: %s", self, r.Failed))
			return
		}
		p = placed{LocalID: r.LocalID, Stamp: at}
	case placeDetach:
		d := replica.Detachment{Resource: wo.Op.Resource, Service: req.svc.Name, Purge: wo.Purge, Path: wo.Op.Path}
		if res, err := f.cfg.Catalog.Get(ctx, wo.Op.Resource); err == nil {
			d.LocalID = res.PerSite[self].LocalID
		}
		at, err := f.exec.Detach(ctx, d, stamp)
		if err != nil {
			errcode.Write(w, http.StatusBadGateway, errcode.SiteFailed, err.Error())
			return
		}
		p = placed{Stamp: at}
	default:
		errcode.Write(w, http.StatusBadRequest, "bad_operation", fmt.Sprintf("unknown placement change %q", wo.Place))
		return
	}
	errcode.WriteJSON(w, http.StatusOK, p)
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
				errcode.Write(w, http.StatusBadRequest, errcode.BadInput, `body must be {"site": "NAME"}`)
				return
			}
			var res catalog.Resource
			if detach {
				res, err = f.Detach(r.Context(), r.PathValue("id"), in.Site, in.Delete)
			} else {
				res, err = f.Attach(r.Context(), r.PathValue("id"), in.Site)
			}
			status, code := placementError(err)
			if status == http.StatusOK {
				errcode.WriteJSON(w, http.StatusOK, res)
				return
			}
			errcode.Write(w, status, code, err.Error())
		}
	}
	mux.HandleFunc("POST /v1/resources/{id}/attach", handle(false))
	mux.HandleFunc("POST /v1/resources/{id}/detach", handle(true))
	return mux
}

// placementError is the status and code of an error of Attach or Detach.
func placementError(err error) (int, string) {
	switch {
	case err == nil:
		return http.StatusOK, ""
	case errors.Is(err, catalog.ErrNotFound):
		return http.StatusNotFound, errcode.NotFound
	case errors.Is(err, scope.ErrUnknownSite):
		return http.StatusBadRequest, errcode.UnknownSite
	case errors.Is(err, ErrAlreadyThere), errors.Is(err, ErrNotThere), errors.Is(err, ErrLastSite),
		errors.Is(err, ErrDetachSelf), errors.Is(err, catalog.ErrInvalid):
		return http.StatusBadRequest, errcode.BadInput
	case errors.Is(err, errNotDelivered):
		return http.StatusServiceUnavailable, errcode.Unreachable
	case errors.Is(err, errPlaceUnknown):
		return http.StatusGatewayTimeout, errcode.OutcomeUnknown // as a write's (forward/ops.go)
	default:
		return http.StatusBadGateway, errcode.SiteFailed
	}
}
