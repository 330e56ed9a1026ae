// Package demo runs cheops on this machine with no set-up: three sites on
// loopback, each an agent in front of its own copy of the demo's sample
// application (NotesApp), and a narrated scenario — a replicated create, a
// shared read, a site cut off and still serving, writes on both sides, the
// heal, and the catalogs converged side by side.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/agent"
	"cheops/catalog"
	"cheops/forward"
	"cheops/node"
	"cheops/scope"
)

// Options of a demo run.
type Options struct {
	Out io.Writer
	// Dir holds the sites' data; a temporary directory when empty (removed
	// at the end).
	Dir string
	// ExitAfterScenario returns once the scenario ends instead of leaving
	// the sites running until ctx ends.
	ExitAfterScenario bool
	Logger            *slog.Logger
	// Command is how the commands the demo prints to try run this cheops
	// binary: "cheops" (the default) when it is the one on PATH, else its
	// path ("bin/cheops" after `make build`).
	Command string
}

// ErrNotConverged is returned when the sites did not converge in time.
var ErrNotConverged = errors.New("demo: the sites did not converge")

// Sites of the demo.
var Sites = []string{"paris", "berlin", "rome"}

type site struct {
	name  string
	app   *NotesApp
	appLn net.Listener
	agent *agent.Agent
}

// Run starts the sites, plays the scenario and, unless told to exit,
// keeps the sites up until ctx ends.
func Run(ctx context.Context, opt Options) error {
	out := opt.Out
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir := opt.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "cheops-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	step := func(n int, title string) { say("\n\033[1m%d. %s\033[0m", n, title) }

	sites, err := start(ctx, dir, opt.Logger)
	defer func() {
		for _, s := range sites {
			if s.agent != nil {
				s.agent.Close()
			}
			if s.appLn != nil {
				s.appLn.Close()
			}
		}
	}()
	if err != nil {
		return err
	}
	step(1, "Three sites, each an agent in front of its own copy of the demo's notes application")
	for _, s := range sites {
		say("   %-7s API %s   peer %s", s.name, s.agent.URL(), s.agent.Node().ID())
	}
	if err := waitFor(ctx, 20*time.Second, func() bool { return allSee(sites, scope.Up) }); err != nil {
		return fmt.Errorf("demo: sites did not find each other: %w", err)
	}
	say("   every site sees the two others up")

	paris, berlin, rome := sites[0], sites[1], sites[2]
	step(2, "A replicated create: {notes: paris & berlin}, sent to paris")
	r, err := call(ctx, paris, "POST", "/svc/notes/notes", "{notes: paris & berlin}", `{"text": "buy bread"}`)
	if err != nil {
		return err
	}
	gid := r.header.Get(forward.HeaderResource)
	say("   %d, global id %s, sites: %s", r.status, gid, r.header.Get(forward.HeaderSites))
	say("   paris' app holds %v; berlin's app holds %v; rome's app holds %v", texts(paris), texts(berlin), texts(rome))
	created := time.Now()
	if err := waitFor(ctx, 10*time.Second, func() bool {
		_, err := berlin.agent.Catalog().Get(ctx, gid)
		return err == nil
	}); err != nil {
		return fmt.Errorf("demo: the entry did not reach berlin's catalog: %w", err)
	}
	say("   berlin's catalog holds the entry %d ms later; rome's never will", time.Since(created).Milliseconds())

	step(3, "A shared read: rome asks for the note, scoped to berlin")
	r, err = call(ctx, rome, "GET", "/svc/notes/notes/"+gid, "{notes: berlin}", "")
	if err != nil {
		return err
	}
	say("   answered by %s: %s", r.header.Get(forward.HeaderSite), strings.TrimSpace(string(r.body)))
	say("   rome's own catalog knows nothing of it (outside its scope): GET /v1/resources/%s → %d", gid, mustStatus(ctx, rome, "/v1/resources/"+gid))

	step(4, "berlin is cut off from paris and rome")
	cut(sites, berlin, true)
	if err := waitFor(ctx, 30*time.Second, func() bool { return sees(paris, "berlin", scope.Down) && sees(berlin, "paris", scope.Down) }); err != nil {
		return fmt.Errorf("demo: the cut was not noticed: %w", err)
	}
	say("   paris sees berlin down; berlin sees paris down")
	r, _ = call(ctx, berlin, "GET", "/svc/notes/notes/"+gid, "", "")
	say("   berlin still serves its copy locally: %d %s", r.status, strings.TrimSpace(string(r.body)))

	step(5, "Writes on both sides of the cut")
	r, _ = call(ctx, paris, "PUT", "/svc/notes/notes/"+gid, "", `{"text": "buy bread and milk"}`)
	say("   paris updates the note: %d, sites: %s", r.status, r.header.Get(forward.HeaderSites))
	r, _ = call(ctx, berlin, "POST", "/svc/notes/notes", "{notes: berlin & paris}", `{"text": "call mum"}`)
	second := r.header.Get(forward.HeaderResource)
	say("   berlin creates another note: %d, sites: %s", r.status, r.header.Get(forward.HeaderSites))
	say("   paris' app: %v   berlin's app: %v", texts(paris), texts(berlin))

	step(6, "The heal")
	healed := time.Now()
	cut(sites, berlin, false)
	convergeErr := waitFor(ctx, 30*time.Second, func() bool { return converged(ctx, paris, berlin, gid, second) })
	if convergeErr == nil {
		say("   converged %d ms after the heal", time.Since(healed).Milliseconds())
	}

	step(7, "The catalogs, side by side")
	for _, s := range []*site{paris, berlin, rome} {
		say("   %s:", s.name)
		list, _ := s.agent.Catalog().List(ctx, catalog.Filter{})
		if len(list) == 0 {
			say("      (nothing: no resource is scoped to %s)", s.name)
		}
		for _, res := range list {
			say("      %s  %-26s %s", res.ID, res.Scope, perSite(res))
		}
		say("      app: %v", texts(s))
	}
	if convergeErr != nil {
		say("\n\033[1mNOT CONVERGED\033[0m within 30 s: %v", convergeErr)
		return ErrNotConverged
	}
	say("\n\033[1mConverged: paris and berlin hold the same catalog entries and the same notes; rome holds none of them.\033[0m")
	if opt.ExitAfterScenario {
		return nil
	}
	say("\nThe sites keep running until Ctrl-C. Try, for instance:")
	say("   export CHEOPS_AGENT=%s", paris.agent.URL())
	cheops := opt.Command
	if cheops == "" {
		cheops = "cheops"
	}
	say("   %s sites", cheops)
	say("   %s catalog ls", cheops)
	say("   %s catalog get %s", cheops, gid)
	say("   %s request --scope '{notes: paris & rome}' POST /svc/notes/notes --data '{\"text\": \"hello\"}'", cheops)
	say("   %s catalog watch", cheops)
	<-ctx.Done()
	return nil
}

func start(ctx context.Context, dir string, log *slog.Logger) ([]*site, error) {
	var trust []peer.ID
	for _, n := range Sites {
		_, id, err := node.LoadIdentity(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		trust = append(trust, id)
	}
	var sites []*site
	var boot []string
	for _, n := range Sites {
		s := &site{name: n, app: NewNotesApp()}
		sites = append(sites, s)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return sites, err
		}
		s.appLn = ln
		go http.Serve(ln, s.app) //nolint:errcheck // ends when the listener closes
		cfg := agent.DefaultConfig()
		cfg.API = "127.0.0.1:0"
		cfg.Node.Site, cfg.Node.DataDir, cfg.Node.Trust, cfg.Node.Peers = n, filepath.Join(dir, n), trust, boot
		cfg.Node.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		// Probes a little faster than the WAN defaults, so the cut shows
		// within a couple of seconds.
		cfg.Node.ProbeInterval, cfg.Node.ProbeTimeout = 300*time.Millisecond, time.Second
		cfg.Node.AnnounceInterval, cfg.Node.MaxRedialBackoff = time.Second, time.Second
		// The narration names which sites answered: a replica deadline of
		// 1 s keeps a busy machine from showing an up site pending.
		cfg.ReplicaWait = time.Second
		notes, err := forward.NewService("notes", "http://"+ln.Addr().String())
		if err != nil {
			return sites, err
		}
		cfg.Services = []forward.Service{notes}
		cfg.Logger = log
		a, err := agent.Start(ctx, cfg)
		if err != nil {
			return sites, fmt.Errorf("demo: start %s: %w", n, err)
		}
		s.agent = a
		if boot == nil {
			boot = a.Node().Addrs()[:1]
		}
	}
	return sites, nil
}

func cut(sites []*site, off *site, blocked bool) {
	for _, s := range sites {
		if s == off {
			continue
		}
		for _, pair := range [][2]*site{{s, off}, {off, s}} {
			p, _ := pair[0].agent.Node().PeerOf(pair[1].name)
			if blocked {
				pair[0].agent.Node().Block(p)
			} else {
				pair[0].agent.Node().Unblock(p)
			}
		}
	}
}

func sees(s *site, other string, st scope.State) bool {
	return s.agent.Node().View().Sites[other].State == st
}

func allSee(sites []*site, st scope.State) bool {
	for _, a := range sites {
		for _, b := range sites {
			if a != b && !sees(a, b.name, st) {
				return false
			}
		}
	}
	return true
}

// converged: both catalogs hold both notes with nothing pending, and both
// applications hold the same texts.
func converged(ctx context.Context, a, b *site, ids ...string) bool {
	for _, s := range []*site{a, b} {
		for _, id := range ids {
			res, err := s.agent.Catalog().Get(ctx, id)
			if err != nil {
				return false
			}
			for _, v := range res.PerSite {
				if len(v.Pending) > 0 || v.Status != catalog.StatusOK {
					return false
				}
			}
		}
	}
	return reflect.DeepEqual(texts(a), texts(b))
}

func texts(s *site) []string {
	var out []string
	for _, it := range s.app.Items("notes") {
		out = append(out, fmt.Sprint(it["text"]))
	}
	sort.Strings(out)
	return out
}

func perSite(r catalog.Resource) string {
	var parts []string
	for _, s := range r.Sites {
		v := r.PerSite[s]
		p := fmt.Sprintf("%s=%s", s, v.LocalID)
		if len(v.Pending) > 0 {
			p += fmt.Sprintf("(%d pending)", len(v.Pending))
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func call(ctx context.Context, s *site, method, path, scopeText, body string) (answer, error) {
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, s.agent.URL()+path, rd)
	if err != nil {
		return answer{}, err
	}
	if scopeText != "" {
		req.Header.Set(forward.HeaderScope, scopeText)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, fmt.Errorf("demo: %s %s at %s: %w", method, path, s.name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

func mustStatus(ctx context.Context, s *site, path string) int {
	r, err := call(ctx, s, "GET", path, "", "")
	if err != nil {
		return 0
	}
	return r.status
}

func waitFor(ctx context.Context, within time.Duration, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
