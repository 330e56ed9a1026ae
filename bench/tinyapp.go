package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// tinyApp is a REST application that answers in next to no time: POST
// /items stores a JSON object under a new numeric id and answers it (201),
// GET /items/{id} reads it. The forwarding benchmark puts one behind each
// site's agent to measure what the agents themselves sustain, where
// json-server's own cost (milliseconds per write) would hide it.
type tinyApp struct {
	srv  *http.Server
	done chan struct{}
	URL  string

	next  atomic.Int64
	mu    sync.Mutex
	items map[string][]byte
}

// startTinyApp serves a tinyApp on ip (a free port) until close.
func startTinyApp(ip string) (*tinyApp, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, fmt.Errorf("bench: tiny app: %w", err)
	}
	a := &tinyApp{done: make(chan struct{}), URL: "http://" + ln.Addr().String(), items: map[string][]byte{}}
	a.srv = &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(a.done)
		_ = a.srv.Serve(ln)
	}()
	return a, nil
}

func (a *tinyApp) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		_ = a.srv.Close()
	}
	<-a.done
}

func (a *tinyApp) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/blob" {
		a.blob(w, r)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/items")
	switch {
	case !ok:
		http.NotFound(w, r)
	case r.Method == http.MethodPost && rest == "":
		var obj map[string]any
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&obj); err != nil || obj == nil {
			http.Error(w, "want a JSON object", http.StatusBadRequest)
			return
		}
		id := a.next.Add(1)
		obj["id"] = id
		body, _ := json.Marshal(obj)
		a.mu.Lock()
		a.items[strconv.FormatInt(id, 10)] = body
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	case r.Method == http.MethodGet && strings.HasPrefix(rest, "/"):
		a.mu.Lock()
		body, found := a.items[rest[1:]]
		a.mu.Unlock()
		if !found {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, "{}")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	default:
		http.Error(w, "not here", http.StatusMethodNotAllowed)
	}
}

// createRate runs clients concurrent clients creating items through t
// (scoped to every site given) for d, and returns the creates answered
// 201 per second and the failures.
func createRate(ctx context.Context, t *fwTarget, clients int, d time.Duration) (float64, int, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				body := fmt.Sprintf(`{"client": %d, "n": %d}`, i, n)
				if _, _, err := t.do(ctx, http.MethodPost, "/items", []byte(body), http.StatusCreated); err == nil {
					ok.Add(1)
				} else if ctx.Err() == nil {
					failed.Add(1)
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	rate := float64(ok.Load()) / time.Since(start).Seconds()
	if ok.Load() == 0 {
		return 0, int(failed.Load()), errors.Join(errors.New("bench: no create succeeded"), first)
	}
	return rate, int(failed.Load()), nil
}

// blob serves GET /blob?size=N (N bytes of application/octet-stream,
// generated as they are sent) and PUT /blob (the body read and dropped;
// the answer says how many bytes arrived): large bodies that cost the
// application nothing to make or keep.
func (a *tinyApp) blob(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		n, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "size=N", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.Copy(w, io.LimitReader(zeros{}, n))
	case http.MethodPut:
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"bytes": %d}`, n)
	default:
		http.Error(w, "GET or PUT", http.StatusMethodNotAllowed)
	}
}

// zeros reads as an endless run of 'x'.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// BodyFigures is what one path measured of large bodies.
type BodyFigures struct {
	Path string `json:"path"`
	// GetMBps and PutMBps are MiB/s of one GET and one PUT of the size.
	GetMBps float64 `json:"get_mib_per_s"`
	PutMBps float64 `json:"put_mib_per_s"`
}

// moveBody sends one GET of size bytes from /blob through t and reads
// the answer as it arrives, or one PUT of size bytes generated as they
// are sent, and returns MiB/s.
func moveBody(ctx context.Context, t *fwTarget, method string, size int64) (float64, error) {
	var body io.Reader
	if method == http.MethodPut {
		body = io.LimitReader(zeros{}, size)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.base+"/blob?size="+strconv.FormatInt(size, 10), body)
	if err != nil {
		return 0, err
	}
	if method == http.MethodPut {
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if t.scope != "" {
		req.Header.Set("X-Cheops-Scope", t.scope)
	}
	start := time.Now()
	client := &http.Client{Transport: t.client.Transport, Timeout: 10 * time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("bench: %s 100 MiB via %s: %w", method, t.name, err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, fmt.Errorf("bench: %s 100 MiB via %s: %w", method, t.name, err)
	}
	if resp.StatusCode != http.StatusOK || (method == http.MethodGet && n != size) {
		return 0, fmt.Errorf("bench: %s 100 MiB via %s: %s, %d bytes", method, t.name, resp.Status, n)
	}
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), nil
}

// peakRSS is a process's peak resident set (VmHWM), in MiB.
func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return math.Round(kb/1024*10) / 10
		}
	}
	return 0
}
