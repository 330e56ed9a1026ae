package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"time"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/scope"
)

// create runs a creating request on every required site of the plan,
// records one global id for the local ids the sites chose, and answers
// with the global id. Unreachable sites are recorded as pending. Nothing
// is recorded when no site succeeded.
func (f *Forwarder) create(w http.ResponseWriter, req *request, plan *scope.Plan) {
	self := f.cfg.Membership.Site()
	targets := plan.Required()
	if n, ok := req.svc.Routes.(Namer); ok && req.route.id == "" {
		body, _, err := n.Assign(req.body)
		if err != nil {
			errcode.Write(w, http.StatusBadRequest, "bad_body", err.Error())
			return
		}
		req.body = body
	}
	if !slices.Contains(targets, self) {
		f.coordinate(w, req, plan)
		return
	}
	id := catalog.NewID(time.Now())
	reachable, pending := plan.Reachable(), plan.Pending()
	wr := write{
		op: catalog.Operation{ID: catalog.NewID(time.Now()), Resource: id, Method: req.r.Method,
			Path: opPath(req.rawPath, req.r.Header.Get("Content-Type")), Targets: targets},
		create: true, collection: req.route.collection, reachable: reachable, pending: pending,
		meta:     &catalog.Meta{ID: id, Service: req.svc.Name, Scope: req.scope.String(), Sites: targets, Collection: req.route.collection},
		localIDs: map[string]string{},
		fresh:    true,
	}
	if name, ok := f.clientName(req); ok {
		// The client named it: its name is the same on the sites still
		// owing the create.
		for _, s := range pending {
			wr.localIDs[s] = route{collection: req.route.collection, id: name}.key()
		}
	}
	answer, outcomes, recorded, err := f.replicate(req, wr)
	switch {
	case err != nil:
		f.log.Error("record created resource", "id", id, "err", err)
		errcode.Write(w, http.StatusInternalServerError, "catalog", fmt.Sprintf("created (%s) but not recorded: %v", sitesHeader(outcomes), err))
	case recorded && !answer.ok() && (answer.site == "" || answer.err != nil):
		acceptedPending(w, id, outcomes)
	case answer.site == "":
		errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, "no site could run the request: "+sitesHeader(outcomes))
	case !answer.ok():
		f.reply(w, answer, "", outcomes)
	default:
		answer.body = req.svc.withID(answer.body, id)
		if answer.header.Get("Location") != "" && req.svc.Routes == nil {
			answer.header.Set("Location", location(req, id))
		}
		f.reply(w, answer, id, outcomes)
	}
}

// coordinate hands a create to the nearest reachable site of its scope:
// only a member may write the resource's catalog entry.
func (f *Forwarder) coordinate(w http.ResponseWriter, req *request, plan *scope.Plan) {
	if req.hop != "" {
		errcode.Write(w, http.StatusBadRequest, "not_member", fmt.Sprintf("site %s was asked to coordinate a create outside its scope", f.cfg.Membership.Site()))
		return
	}
	f.handOver(w, req, plan)
}

// handOver sends a write to the nearest reachable required site of the
// plan, as its coordinator. When that site cannot be reached the request
// falls back (fallback.go): planned again without it and dispatched,
// which may run it here.
func (f *Forwarder) handOver(w http.ResponseWriter, req *request, plan *scope.Plan) {
	best, ok := plan.Nearest()
	if !ok {
		errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, "no site of the scope is reachable")
		return
	}
	res := f.execute(req.r.Context(), best.Site, req, req.r.Method, req.rawPath, http.Header{HeaderCoordinate: {"1"}})
	switch {
	case errors.Is(res.err, errNotDelivered):
		f.fallBack(w, req, best.Site, res.err)
		if next, ok := f.replan(req); ok {
			f.dispatch(w, req, next)
			return
		}
		errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, "no site of the scope could be reached: "+req.fallbackHeader())
		return
	case res.err != nil:
		// It may have run there: never send it again.
		errcode.Write(w, http.StatusGatewayTimeout, errcode.OutcomeUnknown,
			fmt.Sprintf("%v: the request was sent to %s, which did not answer; it may have run there (look for it in the catalog before sending it again)", res.err, best.Site))
		return
	}
	// The coordinator's answer carries the resource and per-site headers;
	// its Location names the coordinator, not this agent.
	if id := res.header.Get(HeaderResource); id != "" && res.header.Get("Location") != "" && req.svc.Routes == nil {
		res.header.Set("Location", location(req, id))
	}
	f.reply(w, res, res.header.Get(HeaderResource), nil)
}

// onResource serves a request that names a catalog resource by its
// global id: reads go to one holder, writes to every replica.
func (f *Forwarder) onResource(w http.ResponseWriter, req *request, res catalog.Resource) {
	ctx := req.r.Context()
	view := f.cfg.Membership.View()
	self := f.cfg.Membership.Site()
	pathFor := func(site string) string {
		return withQuery(req.route.path(res.PerSite[site].LocalID), req.rawPath)
	}
	holders := func() []string {
		var out []string
		for _, s := range res.Sites {
			v := res.PerSite[s]
			if v.LocalID != "" && v.Status == catalog.StatusOK && !createPending(res, v) && (s == self || view.Sites[s].State.Reachable()) {
				out = append(out, s)
			}
		}
		if !req.explicit {
			return view.Nearest(out)
		}
		return readOrder(req.scope, req.svc.Name, withDown(view, req.failedSites()), out)
	}()
	if deletedEverywhere(res) {
		errcode.Write(w, http.StatusNotFound, "deleted", fmt.Sprintf("%s was deleted", res.ID))
		return
	}
	switch req.r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		if len(holders) == 0 {
			errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, fmt.Sprintf("no reachable site holds %s", res.ID))
			return
		}
		if f.streamsRead(req) {
			f.readHolders(w, req, res.ID, holders, pathFor)
			return
		}
		var last result
		for _, s := range holders {
			last = f.execute(ctx, s, req, req.r.Method, pathFor(s), nil)
			if last.err == nil {
				last.body = req.svc.withID(last.body, res.ID)
				f.reply(w, last, res.ID, nil)
				return
			}
			f.fallBack(w, req, s, last.err)
		}
		f.reply(w, last, res.ID, nil)
		return
	}
	var reachable, pending []string
	for _, s := range res.Sites {
		if slices.Contains(holders, s) {
			reachable = append(reachable, s)
		} else if res.PerSite[s].Status != catalog.StatusDeleted {
			pending = append(pending, s)
		}
	}
	wr := write{
		op: catalog.Operation{ID: catalog.NewID(time.Now()), Resource: res.ID, Method: req.r.Method, Policy: req.svc.Policies[req.r.Method],
			Path: opPath(withQuery(req.route.path(res.ID), req.rawPath), req.r.Header.Get("Content-Type")), Targets: res.Sites},
		reachable: reachable, pending: pending,
	}
	answer, outcomes, recorded, err := f.replicate(req, wr)
	switch {
	case err != nil:
		f.log.Error("record operation", "id", res.ID, "err", err)
		errcode.Write(w, http.StatusInternalServerError, "catalog", fmt.Sprintf("ran (%s) but not recorded: %v", sitesHeader(outcomes), err))
	case recorded && !answer.ok() && (answer.site == "" || answer.err != nil):
		acceptedPending(w, res.ID, outcomes)
	case answer.site == "":
		errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, "no replica could run the request: "+sitesHeader(outcomes))
	default:
		if answer.ok() {
			answer.body = req.svc.withID(answer.body, res.ID)
		}
		f.reply(w, answer, res.ID, outcomes)
	}
}

// readOrder returns the holders of a resource in the order a read with a
// scope the client gave tries them: the scope's own choice among the
// holders first — planned over a view in which the sites that do not
// hold the resource are down, so that ';' takes its first alternative
// that holds it and '|' the nearest holder, and the required sites of
// the choice ('&') nearest first — then its standbys, then every other
// holder, nearest first (a read is harmless anywhere the resource is;
// the scope says where it should be served from, the catalog where it
// can be). A scope that names no reachable holder leaves the catalog's
// order: nearest first. Pure: no network, no clock.
func readOrder(sc *scope.Scope, service string, view scope.View, holders []string) []string {
	nearest := view.Nearest(holders)
	if sc == nil {
		return nearest
	}
	var others []string
	for s := range view.Sites {
		if !slices.Contains(holders, s) {
			others = append(others, s)
		}
	}
	plan, err := sc.Plan(service, withDown(view, others))
	if err != nil {
		return nearest
	}
	out := view.Nearest(plan.Reachable())
	for _, s := range plan.ReadOrder()[len(out):] {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, s := range nearest {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// streamsRead reports a read of a resource whose answer is passed on as
// it arrives, never held: a GET or HEAD of a client-named service, whose
// answers the agent does not rewrite (an image's data, of any size).
func (f *Forwarder) streamsRead(req *request) bool {
	m := req.r.Method
	return req.svc.Routes != nil && (m == http.MethodGet || m == http.MethodHead)
}

// readHolders serves a read of a resource from the first of its holders
// (nearest first) that answers, streamed (readHere, readThere); a holder
// that cannot be reached, or whose application cannot, is skipped
// (HeaderFallback names it).
func (f *Forwarder) readHolders(w http.ResponseWriter, req *request, id string, holders []string, pathFor func(site string) string) {
	var err error
	w.Header().Set(HeaderResource, id)
	for _, s := range holders {
		if s == f.cfg.Membership.Site() {
			err = f.readHere(w, req, pathFor(s))
		} else {
			err = f.readThere(w, req, s, pathFor(s))
		}
		if err == nil {
			return
		}
		f.fallBack(w, req, s, err)
	}
	errcode.Write(w, http.StatusBadGateway, errcode.SiteFailed, fmt.Sprintf("no holder of %s could answer: %s", id, req.fallbackHeader()))
}

// crossRead reads a collection on several sites and returns the union,
// each item tagged with its site and shown with its global id when the
// catalog knows one.
func (f *Forwarder) crossRead(w http.ResponseWriter, req *request, plan *scope.Plan) {
	reachable, pending := plan.Reachable(), plan.Pending()
	results := f.executeAll(req.r.Context(), reachable, func(ctx context.Context, site string) result {
		return f.execute(ctx, site, req, http.MethodGet, req.rawPath, nil)
	})
	outcomes := map[string]string{}
	for _, s := range pending {
		outcomes[s] = "unreachable"
	}
	if req.svc.Routes != nil {
		f.mergeRead(w, req, results, outcomes)
		return
	}
	merged := []any{}
	sites := make([]string, 0, len(results))
	for s := range results {
		sites = append(sites, s)
	}
	sort.Strings(sites)
	for _, s := range sites {
		r := results[s]
		outcomes[s] = r.outcome()
		if !r.ok() {
			continue
		}
		var items []any
		dec := json.NewDecoder(bytes.NewReader(r.body))
		dec.UseNumber()
		if err := dec.Decode(&items); err != nil {
			merged = append(merged, map[string]any{"_site": s, "_error": "answer is not a JSON array"})
			continue
		}
		for _, it := range items {
			obj, ok := it.(map[string]any)
			if !ok {
				merged = append(merged, map[string]any{"_site": s, "value": it})
				continue
			}
			obj["_site"] = s
			if local, ok := idString(obj[req.svc.IDField]); ok {
				if gid, ok := f.cfg.Catalog.LookupLocal(req.svc.Name, s, local); ok {
					obj[req.svc.IDField] = gid
				}
			}
			merged = append(merged, obj)
		}
	}
	body, _ := json.Marshal(merged)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(HeaderSites, sitesHeader(outcomes))
	w.Header().Set(HeaderSite, f.cfg.Membership.Site())
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// plain forwards a request that creates nothing and names no resource:
// a read to the first reachable target (standbys after), a write to every
// required target.
func (f *Forwarder) plain(w http.ResponseWriter, req *request, plan *scope.Plan) {
	ctx := req.r.Context()
	safe := req.r.Method == http.MethodGet || req.r.Method == http.MethodHead || req.r.Method == http.MethodOptions
	reachable, pending := plan.Reachable(), plan.Pending()
	if safe && f.streams(req) {
		f.streamRead(w, req, plan)
		return
	}
	if safe {
		// A read is tried on every site its plan offers, then, when they
		// all failed, on those of its next plan (fallback.go).
		for {
			var last result
			for _, s := range plan.ReadOrder() {
				if s == f.cfg.Membership.Site() && (req.r.Method == http.MethodGet || req.r.Method == http.MethodHead) {
					// Passed on as it arrives (readHere), unless the
					// fast path found the application failing it already.
					err := req.hereFailed
					req.hereFailed = nil
					if err == nil {
						if err = f.readHere(w, req, req.rawPath); err == nil {
							return
						}
					}
					last = result{site: s, err: err}
					f.fallBack(w, req, s, err)
					continue
				}
				// Passed on as it arrives (readThere).
				err := f.readThere(w, req, s, req.rawPath)
				if err == nil {
					return
				}
				last = result{site: s, err: err}
				f.fallBack(w, req, s, err)
			}
			next, ok := f.replan(req)
			if !ok {
				if last.err == nil && last.site == "" {
					last.err = errors.New("no site reachable")
				}
				if len(req.fellBack) > 0 {
					last.err = fmt.Errorf("no site could run it: %s", req.fallbackHeader())
				}
				f.reply(w, last, "", nil)
				return
			}
			plan = next
		}
	}
	if req.stream != nil && (len(reachable) != 1 || len(pending) > 0) {
		// Streamed only to one site: several read it whole.
		if err := f.readStream(req); err != nil {
			errcode.Write(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body: %v", err))
			return
		}
	}
	if req.stream != nil && len(reachable) == 1 && reachable[0] == f.cfg.Membership.Site() && f.spliceUpload(w, req) {
		return // moved in the kernel (upload.go)
	}
	results := f.executeAll(ctx, reachable, func(ctx context.Context, site string) result {
		return f.execute(ctx, site, req, req.r.Method, req.rawPath, nil)
	})
	if len(pending) == 0 && undelivered(results) {
		// It ran nowhere: it may run on the next alternative.
		for _, s := range reachable {
			f.fallBack(w, req, s, results[s].err)
		}
		if next, ok := f.replan(req); ok {
			f.dispatch(w, req, next)
			return
		}
	}
	outcomes := map[string]string{}
	for _, s := range pending {
		outcomes[s] = catalog.OutcomePending
	}
	for s, r := range results {
		outcomes[s] = r.outcome()
	}
	answer, _ := f.preferred(results)
	var hdr map[string]string
	if len(outcomes) > 1 {
		hdr = outcomes
	}
	f.reply(w, answer, "", hdr)
}

// localID reads the id field of a created resource's JSON body.
func localID(body []byte, field string) (string, bool) {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if dec.Decode(&obj) != nil {
		return "", false
	}
	return idString(obj[field])
}

func idString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, v != ""
	case json.Number:
		return v.String(), true
	}
	return "", false
}

// withID replaces the id field of a JSON object body with the global id
// (adds it first when the object has none); other bodies are returned
// unchanged. The value is spliced in and the rest kept byte for byte
// (scanObject): a create's answer was decoded into a map and marshalled
// back, 3 % of the origin's CPU per replicated create. An object the
// scan leaves alone (an escaped key, the field twice) is decoded.
func withID(body []byte, field, id string) []byte {
	open := skipSpace(body, 0)
	if open >= len(body) || body[open] != '{' {
		return body
	}
	// scanObject reads valid JSON only; a body that is not one valid
	// object is decoded, as before (its first value).
	if !json.Valid(body) {
		return withIDDecoded(body, field, id)
	}
	if at, _, ok := scanObject(body, open, field); ok {
		quoted, _ := json.Marshal(id)
		if at.start >= 0 {
			return slices.Concat(body[:at.start], quoted, body[at.end:])
		}
		name, _ := json.Marshal(field)
		sep := []byte(",")
		if body[skipSpace(body, open+1)] == '}' {
			sep = nil
		}
		return slices.Concat(body[:open+1], name, []byte(":"), quoted, sep, body[open+1:])
	}
	return withIDDecoded(body, field, id)
}

// withIDDecoded is withID by decoding the body into a map and
// marshalling it back: for the objects scanObject leaves alone.
func withIDDecoded(body []byte, field, id string) []byte {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if dec.Decode(&obj) != nil || obj == nil {
		return body
	}
	obj[field] = id
	out, err := json.Marshal(obj)
	if err != nil {
		return body
	}
	return out
}

// deletedEverywhere reports a resource every replica deleted.
func deletedEverywhere(res catalog.Resource) bool {
	for _, s := range res.Sites {
		if res.PerSite[s].Status != catalog.StatusDeleted {
			return false
		}
	}
	return len(res.Sites) > 0
}
