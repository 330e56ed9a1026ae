package bench

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ipfs/go-datastore/query"
	pebbleds "github.com/ipfs/go-ds-pebble"
	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/crdt"
	"cheops/node"
	"cheops/scope"
)

// SelectivityOptions sizes the selectivity scenario.
type SelectivityOptions struct {
	Sites     int   // sites in the run (default 10)
	Resources int   // resources written (default 200)
	ScopeSize int   // sites per resource scope (default 2)
	Seed      int64 // scopes are drawn from this seed
	Progress  io.Writer
}

// SiteTraffic is what one site received.
type SiteTraffic struct {
	Site          string `json:"site"`
	BytesReceived int64  `json:"bytes_received"`
	Entries       int    `json:"entries"`
	Required      int    `json:"entries_required"`
}

// ReplicationRun is one way of replicating the workload.
type ReplicationRun struct {
	Mode       string        `json:"mode"`
	TotalBytes int64         `json:"total_bytes"`
	Sites      []SiteTraffic `json:"sites"`
	Converged  time.Duration `json:"converged_ns"`
	// Written is how long the writes took at their writers.
	Written time.Duration `json:"written_ns"`
	// HeapBytes is the Go heap of the whole process (every site) after
	// convergence and a collection; DiskBytes what the sites' data
	// directories hold.
	HeapBytes uint64 `json:"heap_bytes"`
	DiskBytes int64  `json:"disk_bytes"`
}

// SelectivityResult compares scoped replication with full replication.
type SelectivityResult struct {
	Sites       int            `json:"sites"`
	Resources   int            `json:"resources"`
	ScopeSize   int            `json:"scope_size"`
	Scoped      ReplicationRun `json:"scoped"`
	Full        ReplicationRun `json:"full"`
	Ratio       float64        `json:"traffic_ratio"`
	RatioTarget float64        `json:"traffic_ratio_target"`
	LeakedBytes int64          `json:"leaked_bytes"`
}

// RunSelectivity runs the workload twice on fresh sites: scoped, then
// fully replicated.
func RunSelectivity(ctx context.Context, opt SelectivityOptions) (SelectivityResult, error) {
	if opt.Sites == 0 {
		opt.Sites = 10
	}
	if opt.Resources == 0 {
		opt.Resources = 200
	}
	if opt.ScopeSize == 0 {
		opt.ScopeSize = 2
	}
	if opt.Progress == nil {
		opt.Progress = io.Discard
	}
	if opt.Sites < opt.ScopeSize || opt.ScopeSize < 1 {
		return SelectivityResult{}, fmt.Errorf("bench: %d sites cannot hold scopes of %d", opt.Sites, opt.ScopeSize)
	}
	names := make([]string, opt.Sites)
	for i := range names {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	rng := rand.New(rand.NewPCG(uint64(opt.Seed), 7))
	scopes := make([][]string, opt.Resources)
	for i := range scopes {
		perm := rng.Perm(opt.Sites)[:opt.ScopeSize]
		for _, p := range perm {
			scopes[i] = append(scopes[i], names[p])
		}
	}
	res := SelectivityResult{Sites: opt.Sites, Resources: opt.Resources, ScopeSize: opt.ScopeSize, RatioTarget: 0.25}
	var err error
	fmt.Fprintf(opt.Progress, "selectivity: %d sites, %d resources, scopes of %d: scoped replication…\n", opt.Sites, opt.Resources, opt.ScopeSize)
	if res.Scoped, res.LeakedBytes, err = replicate(ctx, names, scopes, false); err != nil {
		return res, err
	}
	fmt.Fprintf(opt.Progress, "selectivity: same workload, one catalog replicated to every site…\n")
	if res.Full, _, err = replicate(ctx, names, scopes, true); err != nil {
		return res, err
	}
	if res.Full.TotalBytes > 0 {
		res.Ratio = float64(res.Scoped.TotalBytes) / float64(res.Full.TotalBytes)
	}
	return res, nil
}

// benchSite is one in-process site.
type benchSite struct {
	name  string
	node  *node.Node
	store *pebbleds.Datastore
	m     *crdt.Manager
	bw    *byteCounter
}

// entry is the catalog-sized value written per key (a meta or an
// operation of the catalog is about this size).
var entry = []byte(`{"id":"01M83EAYD8HPZEEZZ8C9EQP524","service":"posts","scope":"{posts: s01 & s02}","sites":["s01","s02"],"collection":"/posts","origin":"s01","created":{"wall":1795000000000,"logical":0},"local_ids":{"s01":"17","s02":"4"}}`)

func replicate(ctx context.Context, names []string, scopes [][]string, full bool) (ReplicationRun, int64, error) {
	mode := "scoped"
	if full {
		mode = "full"
	}
	run := ReplicationRun{Mode: mode}
	dir, err := os.MkdirTemp("", "cheops-bench-")
	if err != nil {
		return run, 0, err
	}
	defer os.RemoveAll(dir)
	sites, err := startSites(ctx, dir, names)
	defer func() {
		for _, s := range sites {
			s.m.Close()
			s.node.Close()
			s.store.Close()
		}
	}()
	if err != nil {
		return run, 0, err
	}
	base := map[string]int64{}
	for _, s := range sites {
		base[s.name] = s.bw.received()
	}
	// Every resource: two catalog keys written by its first site.
	want := map[string]int{}
	start := time.Now()
	for i, sc := range scopes {
		group := sc
		if full {
			group = names
		}
		writer := sites[slices.Index(names, sc[0])]
		keys := []string{fmt.Sprintf("/r/%04d/meta", i), fmt.Sprintf("/r/%04d/op/0", i)}
		if err := writer.m.PutBatch(ctx, group, keys, [][]byte{entry, entry}); err != nil {
			return run, 0, fmt.Errorf("bench: write resource %d: %w", i, err)
		}
		for _, s := range group {
			want[s] += len(keys)
		}
	}
	run.Written = time.Since(start)
	// Converged: every site holds every key it must.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		done := true
		for _, s := range sites {
			if n := count(ctx, s); n < want[s.name] {
				done = false
				break
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			return run, 0, fmt.Errorf("bench: %s replication did not converge in 2 minutes", mode)
		}
		time.Sleep(20 * time.Millisecond)
	}
	run.Converged = time.Since(start)
	runtime.GC()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	run.HeapBytes = mem.HeapAlloc
	run.DiskBytes = dirSize(dir)
	time.Sleep(500 * time.Millisecond) // let in-flight gossip land before reading the counters
	var leaked int64
	for _, s := range sites {
		in := s.bw.received() - base[s.name]
		required := 0
		for _, sc := range scopes {
			if slices.Contains(sc, s.name) {
				required += 2
			}
		}
		run.Sites = append(run.Sites, SiteTraffic{Site: s.name, BytesReceived: in, Entries: count(ctx, s), Required: required})
		run.TotalBytes += in
		if !full {
			leaked += foreignBytes(ctx, s)
		}
	}
	return run, leaked, nil
}

func count(ctx context.Context, s *benchSite) int {
	n := 0
	_ = s.m.Scan(ctx, "/r/", func([]string, string, []byte) error { n++; return nil })
	return n
}

// foreignBytes sums the bytes a site's datastore holds under groups it is
// not a member of.
func foreignBytes(ctx context.Context, s *benchSite) int64 {
	res, err := s.store.Query(ctx, query.Query{Prefix: "/g/"})
	if err != nil {
		return -1
	}
	defer res.Close()
	var total int64
	for r := range res.Next() {
		parts := strings.SplitN(strings.TrimPrefix(r.Key, "/g/"), "/", 2)
		if !slices.Contains(strings.Split(parts[0], ","), s.name) {
			total += int64(len(r.Key) + len(r.Value))
		}
	}
	return total
}

func startSites(ctx context.Context, dir string, names []string) ([]*benchSite, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var trust []peer.ID
	for _, n := range names {
		_, id, err := node.LoadIdentity(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		trust = append(trust, id)
	}
	var sites []*benchSite
	var boot []string
	for _, n := range names {
		nc := node.DefaultConfig()
		nc.Site, nc.DataDir, nc.Trust, nc.Peers = n, filepath.Join(dir, n), trust, boot
		nc.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		nc.ProbeInterval, nc.ProbeTimeout = 200*time.Millisecond, time.Second
		nc.AnnounceInterval = 500 * time.Millisecond
		nc.Logger = quiet
		bw := newByteCounter()
		nc.Bandwidth = bw
		nc.Protocols = crdt.Protocols
		nd, err := node.New(ctx, nc)
		if err != nil {
			return sites, err
		}
		store, err := crdt.OpenStore(filepath.Join(dir, n, "store"))
		if err != nil {
			nd.Close()
			return sites, err
		}
		cc := crdt.DefaultConfig()
		cc.Host, cc.Datastore, cc.Self, cc.Resolve, cc.Logger = nd.Host(), store, n, nd.PeerOf, quiet
		m, err := crdt.NewManager(ctx, cc)
		if err != nil {
			nd.Close()
			store.Close()
			return sites, err
		}
		sites = append(sites, &benchSite{name: n, node: nd, store: store, m: m, bw: bw})
		if boot == nil {
			boot = nd.Addrs()[:1]
		}
	}
	// Wait until everyone sees everyone up: group joins need peer ids.
	deadline := time.Now().Add(time.Minute)
	for {
		all := true
		for _, s := range sites {
			v := s.node.View()
			for _, n := range names {
				if v.Sites[n].State != scope.Up && n != s.name {
					all = false
				}
			}
		}
		if all {
			return sites, nil
		}
		if time.Now().After(deadline) {
			return sites, fmt.Errorf("bench: sites did not all see each other up within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Table writes the per-site figures and the totals beside their targets.
func (r SelectivityResult) Table(w io.Writer) {
	fmt.Fprintf(w, "selectivity: %d sites, %d resources, scopes of %d (in-process sites on loopback)\n\n", r.Sites, r.Resources, r.ScopeSize)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "site\tentries\trequired\tKiB in (scoped)\tKiB in (full)\t")
	for i, s := range r.Scoped.Sites {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t\n", s.Site, s.Entries, s.Required, float64(s.BytesReceived)/1024, float64(r.Full.Sites[i].BytesReceived)/1024)
	}
	tw.Flush()
	fmt.Fprintf(w, "\ntotal received: scoped %.1f KiB, full replication %.1f KiB: ratio %.2f (target <= %.2f): %s\n",
		float64(r.Scoped.TotalBytes)/1024, float64(r.Full.TotalBytes)/1024, r.Ratio, r.RatioTarget, Verdict(r.ratioMet()))
	fmt.Fprintf(w, "leaked bytes (group data at non-members): %d (target 0): %s\n", r.LeakedBytes, Verdict(r.LeakedBytes == 0))
	fmt.Fprintf(w, "converged: scoped %v, full %v\n", r.Scoped.Converged.Round(time.Millisecond), r.Full.Converged.Round(time.Millisecond))
}

// ratioMet reports whether scoped replication moved at most RatioTarget
// of what full replication moved.
func (r SelectivityResult) ratioMet() bool { return r.Ratio <= r.RatioTarget }

// Missed lists the targets this run missed (for --strict).
func (r SelectivityResult) Missed() []string {
	var out []string
	if !r.ratioMet() {
		out = append(out, fmt.Sprintf("scoped traffic %.2f of full replication > %.2f", r.Ratio, r.RatioTarget))
	}
	if r.LeakedBytes != 0 {
		out = append(out, fmt.Sprintf("%d bytes of group data at non-members > 0", r.LeakedBytes))
	}
	return out
}

// Plot draws bytes received per site, scoped against full replication.
func (r SelectivityResult) Plot(dir, prefix string) ([]string, error) {
	path := filepath.Join(dir, prefix+".svg")
	return []string{path}, PlotSelectivity(r, path)
}

// dirSize sums the sizes of the files under dir.
func dirSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}
