package forward

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"cheops/catalog"
)

// Global ids in answers.
//
// Design note — one name per resource. A client addresses a resource by
// its global id and must see that id wherever the resource shows:
// creates, reads by id, cross reads, and single-site reads and lists. The
// site whose application answered a read is the one whose catalog maps
// its local ids (it holds every resource it has a copy of, whichever site
// the client asked), so that site rewrites the answer (showGlobal) before
// it leaves: an item whose local id the catalog knows shows the global id;
// an item it does not know (made straight in the application, recorded
// nowhere) keeps its local id and is tagged "_untracked": true.
//
// Local ids are still accepted in a path, for reads on one site only (an
// untracked item has no other name); a write by a local id, or a read by
// one on several sites, is refused (400 local_id): a write must go through
// the catalog by global id, and a local id means a different item on each
// site.

// UntrackedField tags an item of a read answer that the catalog does not
// know: its id is the application's local id.
const UntrackedField = "_untracked"

// showGlobal rewrites a read answer of a default service: an object, or
// each object of an array, whose id field holds a local id that lookup
// knows shows the global id instead; one whose id lookup does not know is
// tagged UntrackedField. Objects without an id, and bodies that are not
// JSON, are left alone. It reports the global id of a single object.
// Pure but for lookup.
func showGlobal(body []byte, field string, lookup func(local string) (string, bool)) ([]byte, string) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || (trimmed[0] != '{' && trimmed[0] != '[') {
		return body, ""
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	if dec.Decode(&v) != nil {
		return body, ""
	}
	show := func(obj map[string]any) string {
		local, ok := idString(obj[field])
		if !ok {
			return ""
		}
		if gid, ok := lookup(local); ok {
			obj[field] = gid
			return gid
		}
		if !catalog.ValidID(local) {
			obj[UntrackedField] = true
		}
		return ""
	}
	gid := ""
	switch v := v.(type) {
	case map[string]any:
		gid = show(v)
	case []any:
		for _, it := range v {
			if obj, ok := it.(map[string]any); ok {
				show(obj)
			}
		}
	default:
		return body, ""
	}
	out, err := json.Marshal(v)
	if err != nil {
		return body, ""
	}
	return out, gid
}

// showHere applies showGlobal to this site's application's answer to a
// read, and turns its 404 for an item into cheops' unknown_resource: the
// application's own 404 ("{}" for json-server) would say nothing of
// which id was not found, or where.
func (f *Forwarder) showHere(req *request, method string, res result) result {
	if res.err != nil || req.svc.Routes != nil || (method != http.MethodGet && method != http.MethodHead) {
		return res
	}
	self := f.cfg.Membership.Site()
	switch {
	case res.status == http.StatusNotFound && req.route.id != "" && req.route.rest == "" && !req.route.other:
		return unknownResource(self, req.route.id)
	case res.status >= 200 && res.status < 300 && method == http.MethodGet:
		ct := res.header.Get("Content-Type")
		if ct != "" && !strings.Contains(ct, "json") {
			return res
		}
		body, gid := showGlobal(res.body, req.svc.IDField, func(local string) (string, bool) {
			return f.cfg.Catalog.LookupLocal(req.svc.Name, self, local)
		})
		if !bytes.Equal(body, res.body) {
			res.header = res.header.Clone()
			res.header.Del("Etag") // the body changed
			res.body = body
		}
		if gid != "" && req.route.id != "" {
			res.header.Set(HeaderResource, gid)
		}
	}
	return res
}

// location is the agent's own URL of a created resource, for the Location
// header of the answer (the application's names its own address and the
// local id).
func location(req *request, id string) string {
	scheme := "http"
	if req.r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + req.r.Host + "/svc/" + req.svc.Name + req.route.collection + "/" + id
}

// localIDRefusal reports a client request that names an item by an id
// that is not a global id where only a global id will do (see the design
// note above): a write, or a read on several sites.
func localIDRefusal(req *request, required []string) (string, bool) {
	if req.hop != "" || req.svc.Routes != nil || req.route.other || req.route.id == "" || catalog.ValidID(req.route.id) {
		return "", false
	}
	switch req.r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		if len(required) <= 1 {
			return "", false
		}
		return fmt.Sprintf("%q is not a global id: a local id names an item on one site, and the scope names %s", req.route.id, strings.Join(required, ", ")), true
	}
	return fmt.Sprintf("%q is not a global id: writes name a resource by its global id (X-Cheops-Resource of its create), so that every replica and the catalog see them", req.route.id), true
}
