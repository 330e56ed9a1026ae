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
		lookup := func(local string) (string, bool) {
			return f.cfg.Catalog.LookupLocal(req.svc.Name, self, local)
		}
		body, gid, ok := spliceGlobal(res.body, req.svc.IDField, lookup)
		if !ok {
			body, gid = showGlobal(res.body, req.svc.IDField, lookup)
		}
		if !bytes.Equal(body, res.body) {
			// The header is this answer's own (callApp, readHere).
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

// spliceGlobal is showGlobal without decoding the answer into maps and
// encoding it again: the id values it rewrites are replaced in place and
// UntrackedField is inserted after an untracked object's '{', so the rest
// of the answer keeps the application's bytes (its formatting and key
// order). ok is false when the answer is not one it can edit safely —
// not valid JSON, an escaped id, an id field given twice, an object that
// has UntrackedField already — and the caller falls back to showGlobal.
// Pure but for lookup.
func spliceGlobal(body []byte, field string, lookup func(local string) (string, bool)) (out []byte, gid string, ok bool) {
	i := skipSpace(body, 0)
	if i == len(body) || (body[i] != '{' && body[i] != '[') {
		return body, "", true
	}
	if !json.Valid(body) {
		return nil, "", false
	}
	var edits []edit
	show := func(start int) (end int, gid string, ok bool) {
		id, end, ok := scanObject(body, start, field)
		if !ok || id.start < 0 {
			return end, "", ok
		}
		local := string(body[id.start:id.end])
		if body[id.start] == '"' {
			local = local[1 : len(local)-1]
			if local == "" {
				return end, "", true
			}
		} else if body[id.start] != '-' && (body[id.start] < '0' || body[id.start] > '9') {
			return end, "", true // not a string or a number: not an id
		}
		if g, known := lookup(local); known {
			q, _ := json.Marshal(g)
			edits = append(edits, edit{id.start, id.end, q})
			return end, g, true
		}
		if !catalog.ValidID(local) {
			edits = append(edits, edit{start + 1, start + 1, untrackedTag(start, end, body)})
		}
		return end, "", true
	}
	if body[i] == '{' {
		_, gid, ok = show(i)
		if !ok {
			return nil, "", false
		}
	} else {
		for j := skipSpace(body, i+1); j < len(body) && body[j] != ']'; {
			var end int
			if body[j] == '{' {
				if end, _, ok = show(j); !ok {
					return nil, "", false
				}
			} else {
				end = skipValue(body, j)
			}
			j = skipSpace(body, end)
			if j < len(body) && body[j] == ',' {
				j = skipSpace(body, j+1)
			}
		}
	}
	if len(edits) == 0 {
		return body, gid, true
	}
	n := len(body)
	for _, e := range edits {
		n += len(e.with) - (e.end - e.start)
	}
	out = make([]byte, 0, n)
	last := 0
	for _, e := range edits {
		out = append(out, body[last:e.start]...)
		out = append(out, e.with...)
		last = e.end
	}
	return append(out, body[last:]...), gid, true
}

// edit replaces body[start:end] with with.
type edit struct {
	start, end int
	with       []byte
}

// span is a value's place in a body; start is -1 for none.
type span struct{ start, end int }

var (
	untrackedEmpty = []byte(`"` + UntrackedField + `":true`)
	untrackedComma = []byte(`"` + UntrackedField + `":true,`)
)

// untrackedTag is what is inserted after the '{' of the object
// body[start:end]: the field, with a comma unless the object is empty.
func untrackedTag(start, end int, body []byte) []byte {
	if skipSpace(body, start+1) == end-1 {
		return untrackedEmpty
	}
	return untrackedComma
}

// scanObject reads the valid JSON object at body[start] and returns the
// span of field's value and the index after the object. ok is false
// when field is given twice, escaped, or the object has UntrackedField.
func scanObject(body []byte, start int, field string) (id span, end int, ok bool) {
	id = span{-1, -1}
	i := skipSpace(body, start+1)
	for i < len(body) && body[i] != '}' {
		keyEnd := skipValue(body, i)
		key := body[i+1 : keyEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			return id, 0, false
		}
		i = skipSpace(body, keyEnd)
		i = skipSpace(body, i+1) // ':'
		valEnd := skipValue(body, i)
		switch string(key) {
		case field:
			if id.start >= 0 || (body[i] == '"' && bytes.IndexByte(body[i:valEnd], '\\') >= 0) {
				return id, 0, false
			}
			id = span{i, valEnd}
		case UntrackedField:
			return id, 0, false
		}
		i = skipSpace(body, valEnd)
		if i < len(body) && body[i] == ',' {
			i = skipSpace(body, i+1)
		}
	}
	return id, i + 1, true
}

// skipValue returns the index after the valid JSON value at body[i].
func skipValue(body []byte, i int) int {
	switch body[i] {
	case '"':
		for j := i + 1; j < len(body); j++ {
			switch body[j] {
			case '\\':
				j++
			case '"':
				return j + 1
			}
		}
		return len(body)
	case '{', '[':
		depth := 0
		for j := i; j < len(body); j++ {
			switch body[j] {
			case '"':
				j = skipValue(body, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(body)
	}
	j := i
	for j < len(body) && !strings.ContainsRune(" \t\r\n,}]", rune(body[j])) {
		j++
	}
	return j
}

func skipSpace(body []byte, i int) int {
	for i < len(body) && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n') {
		i++
	}
	return i
}
