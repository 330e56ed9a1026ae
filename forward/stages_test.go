package forward

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
)

// BenchmarkReadStages times one small read by stage, one after the
// other, in one process (real libp2p hosts over loopback TCP, real HTTP
// servers): what each adds is the difference with the stage before.
//
//	app          client → application (the reference)
//	local        client → agent a → application (a's handler and its call)
//	stream-echo  a 300-byte message and its echo on a kept libp2p stream
//	             a → b (TLS 1.3 + yamux: the floor of any hop)
//	hop          a's sendRemote → b's serveStream → application (no client)
//	remote       client → agent a → hop → agent b → application
//	remote-8MiB  the same, of an 8 MiB answer
func BenchmarkReadStages(b *testing.B) {
	big := make([]byte, 8<<20)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("big") != "" {
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(big)
			return
		}
		fmt.Fprintf(w, `[{"id": 1, "path": %q}]`, r.URL.Path)
	}))
	defer app.Close()
	k := newKeptHops(b, app.URL)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer client.CloseIdleConnections()
	front := func(f *Forwarder) string {
		srv := httptest.NewUnstartedServer(f)
		srv.Listener = ErrorListener(srv.Listener)
		srv.Start()
		b.Cleanup(srv.Close)
		return srv.URL
	}
	get := func(b *testing.B, url, scope string) {
		req, _ := http.NewRequest(http.MethodGet, url, http.NoBody)
		if scope != "" {
			req.Header.Set(HeaderScope, scope)
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: %s", url, resp.Status)
		}
	}
	measure := func(b *testing.B, op func(b *testing.B)) {
		op(b) // connections and streams made
		cpu0 := processCPU()
		for b.Loop() {
			op(b)
		}
		b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	}
	frontA := front(k.a)
	b.Run("app", func(b *testing.B) {
		measure(b, func(b *testing.B) { get(b, app.URL+"/files", "") })
	})
	b.Run("local", func(b *testing.B) {
		measure(b, func(b *testing.B) { get(b, frontA+"/svc/files/files", "{files: a}") })
	})
	b.Run("stream-echo", func(b *testing.B) {
		k.hb.SetStreamHandler("/cheops/echo-test", func(s network.Stream) {
			_, _ = io.Copy(s, s)
			s.Close()
		})
		s, err := k.a.cfg.Host.NewStream(context.Background(), k.b.cfg.Host.ID(), "/cheops/echo-test")
		if err != nil {
			b.Fatal(err)
		}
		defer s.Reset()
		msg, buf := make([]byte, 300), make([]byte, 300)
		br := bufio.NewReader(s)
		measure(b, func(b *testing.B) {
			if _, err := s.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(br, buf); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("hop", func(b *testing.B) {
		req, _ := http.NewRequest(http.MethodGet, "http://cheops/svc/files/files", http.NoBody)
		req.Header.Set(HeaderScope, "{files: b}")
		measure(b, func(b *testing.B) {
			if _, _, err := k.a.sendRemote(context.Background(), "b", req, 1<<20); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("remote", func(b *testing.B) {
		measure(b, func(b *testing.B) { get(b, frontA+"/svc/files/files", "{files: b}") })
	})
	// A large answer through the remote agent: MB/s, and CPU per op
	// (8 MiB; both agents, the client and the application).
	b.Run("remote-8MiB", func(b *testing.B) {
		b.SetBytes(int64(len(big)))
		measure(b, func(b *testing.B) { get(b, frontA+"/svc/files/files?big=1", "{files: b}") })
	})
}
