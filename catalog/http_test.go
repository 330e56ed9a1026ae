package catalog

import (
	"bufio"
	"cheops/internal/testkit"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWatchAndHTTP(t *testing.T) {
	c := newTestCatalog(t, newMemNet().store("paris"), "paris")
	srv := httptest.NewServer(Handler(c))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/watch", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	events := bufio.NewScanner(resp.Body)
	events.Scan() // the opening comment

	id := create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"})
	var got Change
	for events.Scan() {
		if data, ok := strings.CutPrefix(events.Text(), "data: "); ok {
			if err := json.Unmarshal([]byte(data), &got); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if got.ID != id {
		t.Fatalf("watched %+v, want a change of %s", got, id)
	}

	var list []Resource
	getJSON(t, srv.URL+"/v1/resources?service=posts", http.StatusOK, &list)
	if len(list) != 1 || list[0].ID != id {
		t.Fatalf("list = %+v", list)
	}
	getJSON(t, srv.URL+"/v1/resources?service=images", http.StatusOK, &list)
	if len(list) != 0 {
		t.Fatalf("filtered list = %+v", list)
	}
	var one map[string]any
	getJSON(t, srv.URL+"/v1/resources/"+id, http.StatusOK, &one)
	if one["service"] != "posts" || one["sites"].(map[string]any)["paris"].(map[string]any)["local_id"] != "1" {
		t.Fatalf("resource JSON = %v", one)
	}
	var e map[string]string
	getJSON(t, srv.URL+"/v1/resources/01ARZ3NDEKTSV4RRFFQ69G5FAV", http.StatusNotFound, &e)
	if e["code"] != "not_found" || e["error"] == "" {
		t.Fatalf("error JSON = %v", e)
	}
}

func getJSON(t *testing.T, url string, status int, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %d, want %d", url, resp.StatusCode, status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatal(err)
	}
}

// The JSON of GET /v1/resources/{id} has the shape `cheops catalog get`
// reads (cmd/cheops/catalog.go): id, service, scope, sites (per site:
// local_id, status, pending), operations.
func TestResourceJSONShape(t *testing.T) {
	net := newMemNet()
	c := newTestCatalog(t, net.store("paris"), "paris")
	srv := httptest.NewServer(Handler(c))
	defer srv.Close()
	id := create(t, c, "posts", []string{"paris", "berlin"}, map[string]string{"paris": "1"}, "berlin")

	var one map[string]json.RawMessage
	getJSON(t, srv.URL+"/v1/resources/"+id, http.StatusOK, &one)
	for _, field := range []string{"id", "service", "scope", "sites", "operations", "origin", "created", "collection"} {
		if _, ok := one[field]; !ok {
			t.Errorf("no %q in %s", field, one)
		}
	}
	var sites map[string]struct {
		LocalID string   `json:"local_id"`
		Status  string   `json:"status"`
		Pending []string `json:"pending"`
	}
	if err := json.Unmarshal(one["sites"], &sites); err != nil {
		t.Fatal(err)
	}
	if len(sites) != 2 || sites["paris"].LocalID != "1" || sites["paris"].Status != StatusOK ||
		sites["berlin"].Status != StatusPending || len(sites["berlin"].Pending) != 1 {
		t.Fatalf("sites = %+v", sites)
	}
	var ops []map[string]any
	if err := json.Unmarshal(one["operations"], &ops); err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0]["method"] != "POST" || ops[0]["origin"] != "paris" || ops[0]["id"] == "" || ops[0]["at"] == nil {
		t.Fatalf("operations = %v", ops)
	}
	if ops[0]["outcomes"].(map[string]any)["berlin"] != OutcomePending {
		t.Fatalf("outcomes = %v", ops[0]["outcomes"])
	}

	// The list is a JSON array, empty rather than null.
	empty := newTestCatalog(t, newMemNet().store("rome"), "rome")
	esrv := httptest.NewServer(Handler(empty))
	defer esrv.Close()
	resp, err := http.Get(esrv.URL + "/v1/resources")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(body)) != "[]" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("empty list: %q %s", body, resp.Header.Get("Content-Type"))
	}
	// A site outside the scope answers 404 with a JSON error.
	var e map[string]string
	getJSON(t, esrv.URL+"/v1/resources/"+id, http.StatusNotFound, &e)
	if e["code"] != "not_found" || !strings.Contains(e["error"], id) {
		t.Fatalf("error = %v", e)
	}
	// Only GET is served.
	resp, err = http.Post(srv.URL+"/v1/resources/"+id, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}

// The event stream carries one event per change and ends when the client
// goes away (the watch is released).
func TestWatchStreamEndsWithTheClient(t *testing.T) {
	c := newTestCatalog(t, newMemNet().store("paris"), "paris")
	srv := httptest.NewServer(Handler(c))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/watch", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	events := bufio.NewScanner(resp.Body)
	events.Scan()
	ids := []string{
		create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"}),
		create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "2"}),
	}
	var got []Change
	for len(got) < 4 && events.Scan() {
		if data, ok := strings.CutPrefix(events.Text(), "data: "); ok {
			var ch Change
			if err := json.Unmarshal([]byte(data), &ch); err != nil {
				t.Fatal(err)
			}
			got = append(got, ch)
		}
	}
	want := []Change{{ID: ids[0], Kind: KindMeta}, {ID: ids[0], Kind: KindOp}, {ID: ids[1], Kind: KindMeta}, {ID: ids[1], Kind: KindOp}}
	for i := range want {
		if i >= len(got) || got[i].ID != want[i].ID || got[i].Kind != want[i].Kind {
			t.Fatalf("events %+v, want %+v", got, want)
		}
	}
	cancel()
	resp.Body.Close()
	testkit.Eventually(t, 5*time.Second, "the watch is released", func() error {
		c.mu.RLock()
		defer c.mu.RUnlock()
		if n := len(c.watchers); n != 0 {
			return fmt.Errorf("%d watchers", n)
		}
		return nil
	})
}

// A burst of changes queued together reaches the stream whole and in
// order (the stream writes the queued ones together).
func TestWatchStreamCarriesABurst(t *testing.T) {
	c := newTestCatalog(t, newMemNet().store("paris"), "paris")
	srv := httptest.NewServer(Handler(c))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/watch", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := bufio.NewScanner(resp.Body)
	events.Scan() // the opening comment
	var want []string
	for range 200 {
		want = append(want, create(t, c, "posts", []string{"paris"}, map[string]string{"paris": "1"}))
	}
	var got []string
	for len(got) < len(want) && events.Scan() {
		data, ok := strings.CutPrefix(events.Text(), "data: ")
		if !ok {
			continue
		}
		var ch Change
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			t.Fatal(err)
		}
		if ch.Kind == KindMeta {
			got = append(got, ch.ID)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the stream carried %d resources of %d, or out of order", len(got), len(want))
	}
}
