package demo

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// NotesApp is the demo's sample REST application: an in-memory JSON store
// of collections, one per site, standing in for the unmodified application
// an operator would run. It knows nothing of sites or cheops.
//
//	POST   /{collection}        create, answers 201 with the item and its id
//	GET    /{collection}        list
//	GET    /{collection}/{id}   read
//	PUT    /{collection}/{id}   replace
//	PATCH  /{collection}/{id}   merge fields
//	DELETE /{collection}/{id}   delete
type NotesApp struct {
	mu    sync.Mutex
	next  int
	items map[string]map[int]map[string]any
}

// NewNotesApp returns an empty application.
func NewNotesApp() *NotesApp { return &NotesApp{items: map[string]map[int]map[string]any{}} }

// Items lists a collection by id.
func (a *NotesApp) Items(collection string) []map[string]any {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []int
	for id := range a.items[collection] {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	out := make([]map[string]any, 0, len(ids))
	for _, id := range ids {
		out = append(out, a.items[collection][id])
	}
	return out
}

func (a *NotesApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	coll := parts[0]
	if coll == "" || len(parts) > 2 {
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	items := a.items[coll]
	if items == nil {
		items = map[int]map[string]any{}
		a.items[coll] = items
	}
	if len(parts) == 1 {
		switch r.Method {
		case http.MethodGet:
			var ids []int
			for id := range items {
				ids = append(ids, id)
			}
			sort.Ints(ids)
			out := make([]map[string]any, 0, len(ids))
			for _, id := range ids {
				out = append(out, items[id])
			}
			reply(w, http.StatusOK, out)
		case http.MethodPost:
			var it map[string]any
			if json.NewDecoder(r.Body).Decode(&it) != nil || it == nil {
				reply(w, http.StatusBadRequest, map[string]string{"error": "body must be a JSON object"})
				return
			}
			a.next++
			it["id"] = a.next
			items[a.next] = it
			reply(w, http.StatusCreated, it)
		default:
			reply(w, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed"})
		}
		return
	}
	id, err := strconv.Atoi(parts[1])
	it, ok := items[id]
	if err != nil || !ok {
		reply(w, http.StatusNotFound, map[string]string{"error": "no such item"})
		return
	}
	switch r.Method {
	case http.MethodGet:
		reply(w, http.StatusOK, it)
	case http.MethodPut, http.MethodPatch:
		var in map[string]any
		if json.NewDecoder(r.Body).Decode(&in) != nil || in == nil {
			reply(w, http.StatusBadRequest, map[string]string{"error": "body must be a JSON object"})
			return
		}
		if r.Method == http.MethodPut {
			it = map[string]any{}
		}
		for k, v := range in {
			it[k] = v
		}
		it["id"] = id
		items[id] = it
		reply(w, http.StatusOK, it)
	case http.MethodDelete:
		delete(items, id)
		reply(w, http.StatusOK, map[string]any{})
	default:
		reply(w, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed"})
	}
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
