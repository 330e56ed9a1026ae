package glance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// storeGlance keeps images and their data: enough of Glance for repair.
type storeGlance struct {
	mu     sync.Mutex
	status map[string]string
	data   map[string][]byte
}

func (g *storeGlance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	route := (Routes{}).Route(r.URL.Path)
	switch {
	case r.Method == http.MethodGet && route.ID == "":
		var list []imageStatus
		for id, st := range g.status {
			if q := r.URL.Query().Get("status"); q == "" || q == st {
				list = append(list, imageStatus{ID: id, Status: st})
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"images": list})
	case r.Method == http.MethodGet && route.Rest == "":
		st, ok := g.status[route.ID]
		if !ok {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(imageStatus{ID: route.ID, Status: st})
	case r.Method == http.MethodGet && route.Rest == "/file":
		w.Write(g.data[route.ID])
	case r.Method == http.MethodPut && route.Rest == "/file":
		b, _ := io.ReadAll(r.Body)
		g.data[route.ID], g.status[route.ID] = b, "active"
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "no", http.StatusBadRequest)
	}
}

// b's Glance holds an image queued (its agent replayed the create, the
// upload went by while it was away); a's holds it active: RepairOnce at b
// streams a's data into b's Glance. An image the catalog does not track,
// or one queued everywhere, is left alone.
func TestRepairFetchesFromAHolder(t *testing.T) {
	ha, hb := newHost(t), newHost(t)
	if err := hb.Connect(context.Background(), peer.AddrInfo{ID: ha.ID(), Addrs: ha.Addrs()}); err != nil {
		t.Fatal(err)
	}
	peers := map[string]peer.ID{"a": ha.ID(), "b": hb.ID()}
	id, untracked := "11111111-2222-4333-8444-555555555555", "99999999-2222-4333-8444-555555555555"
	data := make([]byte, 3<<20+5)
	rand.Read(data)
	ga := &storeGlance{status: map[string]string{id: "active", untracked: "active"}, data: map[string][]byte{id: data, untracked: data}}
	gb := &storeGlance{status: map[string]string{id: "queued", untracked: "queued"}, data: map[string][]byte{}}
	var datas []*Data
	for _, s := range []struct {
		site string
		h    host.Host
		g    *storeGlance
	}{{"a", ha, ga}, {"b", hb, gb}} {
		srv := httptest.NewServer(s.g)
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		d, err := NewData(DataConfig{Service: "glance", URL: u, Host: s.h, Membership: members{self: s.site, peers: peers},
			Catalog: oneImage{id: id, sites: []string{"a", "b"}}, Next: http.NotFoundHandler(), RepairInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		datas = append(datas, d)
	}
	n, err := datas[1].RepairOnce(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("RepairOnce = %d, %v", n, err)
	}
	if gb.status[id] != "active" || !bytes.Equal(gb.data[id], data) {
		t.Fatalf("b: %s, %d bytes", gb.status[id], len(gb.data[id]))
	}
	if gb.status[untracked] != "queued" {
		t.Fatal("an image the catalog does not track was repaired")
	}
	// Nothing left to do; a's copy queued too would be no source.
	if n, err := datas[1].RepairOnce(context.Background()); n != 0 || err != nil {
		t.Fatalf("second RepairOnce = %d, %v", n, err)
	}
	ga.status[id] = "queued"
	if n, _ := datas[0].RepairOnce(context.Background()); n != 1 || ga.status[id] != "active" {
		t.Fatalf("a repaired from b: %d %s", n, ga.status[id])
	}
}

// Image data crosses between member sites only: a peer that a's
// membership does not know as a site can neither read an image's data
// from a's Glance nor upload into it over DataProtocol; b, a member, can.
func TestDataStreamsAreForMembersOnly(t *testing.T) {
	ha, hb, hx := newHost(t), newHost(t), newHost(t)
	for _, h := range []host.Host{hb, hx} {
		if err := h.Connect(context.Background(), peer.AddrInfo{ID: ha.ID(), Addrs: ha.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	id := "11111111-2222-4333-8444-555555555555"
	data := make([]byte, 1<<20+9)
	rand.Read(data)
	ga := &storeGlance{status: map[string]string{id: "active"}, data: map[string][]byte{id: data}}
	srv := httptest.NewServer(ga)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	newData := func(site string, h host.Host, peers map[string]peer.ID) *Data {
		d, err := NewData(DataConfig{Service: "glance", URL: u, Host: h, Membership: members{self: site, peers: peers},
			Catalog: oneImage{id: id, sites: []string{"a", "b"}}, Next: http.NotFoundHandler(), RepairInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		return d
	}
	newData("a", ha, map[string]peer.ID{"a": ha.ID(), "b": hb.ID()})
	b := newData("b", hb, map[string]peer.ID{"a": ha.ID(), "b": hb.ID()})
	// x believes it is a member; a does not know it.
	x := newData("x", hx, map[string]peer.ID{"a": ha.ID(), "x": hx.ID()})
	path := Images + "/" + id + "/file"

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, s, err := b.read(ctx, ha.ID(), path)
	if err != nil {
		t.Fatalf("b reads from a: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	s.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("b read %d bytes of %d", len(got), len(data))
	}

	if resp, s, err := x.read(ctx, ha.ID(), path); err == nil {
		got, _ := io.ReadAll(resp.Body)
		s.Close()
		t.Fatalf("a stranger read the image from a: %d, %d bytes", resp.StatusCode, len(got))
	}
	o := x.sendRemote(ctx, ha.ID(), id, PartFile, http.Header{}, 5, bytes.NewReader([]byte("forge")))
	if o.err == nil {
		t.Fatalf("a stranger's upload was answered %d %s", o.status, o.body)
	}
	ga.mu.Lock()
	defer ga.mu.Unlock()
	if !bytes.Equal(ga.data[id], data) {
		t.Fatalf("a's Glance holds %d bytes after a stranger's upload", len(ga.data[id]))
	}
}
