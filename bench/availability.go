package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// WriteTally counts the writes issued in one phase and those accepted.
type WriteTally struct {
	Issued   int     `json:"issued"`
	Accepted int     `json:"accepted"`
	Share    float64 `json:"share"`
}

// TimelinePoint is the writes issued in one second of the run (by issue
// time, from the start of the first phase) and how many were accepted.
type TimelinePoint struct {
	T        float64 `json:"t_s"`
	Issued   int     `json:"issued"`
	Accepted int     `json:"accepted"`
}

// SystemAvailability is what one system accepted on the isolated site.
type SystemAvailability struct {
	System string     `json:"system"`
	Before WriteTally `json:"before_cut"`
	During WriteTally `json:"during_cut"`
	After  WriteTally `json:"after_heal"`
	// AtHeal counts the writes issued in the last second of the cut:
	// answered around the heal, they are judged in no phase (a write
	// answered in 100 ms just after the heal did not wait for it, and one
	// that did cannot be told from it by its latency alone).
	AtHeal WriteTally `json:"issued_last_second_of_cut"`
	// LatencyBefore and LatencyDuring are those of the accepted writes.
	LatencyBefore Latency `json:"accepted_latency_before_cut"`
	LatencyDuring Latency `json:"accepted_latency_during_cut"`
	// WithinSecond counts the writes accepted during the cut that were
	// answered within a second.
	WithinSecond int `json:"accepted_within_1s_during_cut"`
	// FarPending counts accepted writes during the cut whose far site was
	// recorded pending (cheops only).
	FarPending int `json:"far_part_pending,omitempty"`
	// Errors counts the refusals by kind.
	Errors   map[string]int  `json:"errors,omitempty"`
	Timeline []TimelinePoint `json:"timeline"`
}

// AvailabilityResult is the availability scenario: the share of writes
// accepted on a site cut off from the others, for cheops and for a
// 3-member etcd cluster spread over the same sites and the same emulated
// WAN, both written to at the same rate during the same cut.
type AvailabilityResult struct {
	Sites    int      `json:"sites"`
	RTT      float64  `json:"rtt_ms"`
	Isolated string   `json:"isolated_site"`
	Others   []string `json:"other_sites"`
	// EtcdSites are the sites of the etcd members; EtcdLeader the site
	// whose member led when the cut began.
	EtcdSites   []string `json:"etcd_sites"`
	EtcdLeader  string   `json:"etcd_leader_at_cut"`
	EtcdVersion string   `json:"etcd_version"`
	// Rate is the writes per second sent to each system (open loop, each
	// with ClientTimeout), during phases of BeforeSeconds, CutSeconds
	// and AfterSeconds.
	Rate          float64            `json:"writes_per_second"`
	ClientTimeout float64            `json:"client_timeout_s"`
	BeforeSeconds float64            `json:"before_s"`
	CutSeconds    float64            `json:"cut_s"`
	AfterSeconds  float64            `json:"after_s"`
	Cheops        SystemAvailability `json:"cheops"`
	Etcd          SystemAvailability `json:"etcd"`
	// Target is the share of local writes cheops must accept on the
	// isolated site; Met says whether it did.
	Target float64 `json:"target_share"`
	Met    bool    `json:"target_met"`
	// PromptTarget is the share of the isolated site's writes during the
	// cut that cheops must answer within a second (replicas that do not
	// answer by the replica deadline are pending, never waited for);
	// PromptMet says whether it did.
	PromptTarget float64 `json:"target_within_1s_share"`
	PromptMet    bool    `json:"target_within_1s_met"`
	Note         string  `json:"note,omitempty"`
}

// availabilityProfile sizes a run.
type availabilityProfile struct {
	rtt                time.Duration
	before, cut, after time.Duration
	rate               float64 // writes per second per system
	timeout            time.Duration
	agentArgs          []string // added to every agent's command line
}

var (
	availabilityQuick = availabilityProfile{rtt: 20 * time.Millisecond, before: 5 * time.Second, cut: 30 * time.Second,
		after: 10 * time.Second, rate: 10, timeout: 15 * time.Second}
	availabilityFull = availabilityProfile{rtt: 20 * time.Millisecond, before: 20 * time.Second, cut: 120 * time.Second,
		after: 30 * time.Second, rate: 20, timeout: 15 * time.Second}
)

// RunAvailability cuts the first site off from the others and writes from
// it, at the same moments, to cheops (creates and updates of resources
// whose scope names the isolated site and one far site) and to a 3-member
// etcd cluster whose members run on the first three sites with their peer
// traffic through the same emulated WAN (puts through the isolated
// member). It reports the share each accepted before, during and after the
// cut.
func RunAvailability(ctx context.Context, env Env) (*AvailabilityResult, error) {
	p := availabilityQuick
	if env.Full {
		p = availabilityFull
	}
	return runAvailability(ctx, env, p)
}

func runAvailability(ctx context.Context, env Env, p availabilityProfile) (*AvailabilityResult, error) {
	log := env.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(env.Agents) > 0 {
		return nil, errors.New("bench: availability cuts the network between sites, so it runs only on sites it starts (no --agents)")
	}
	n := env.Sites
	if n == 0 {
		n = 3
	}
	if n < 3 {
		return nil, fmt.Errorf("bench: availability needs at least 3 sites (one etcd member each), got %d", n)
	}
	etcdBin, err := ensureCommand(ctx, log, "etcd", "etcd-server")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(env.Dir, "availability")
	log.Info("availability: starting sites", "sites", n, "rtt", p.rtt)
	c, err := StartCluster(ctx, ClusterOptions{Binary: env.Binary, Sites: citySites(n), Dir: dir, RTT: p.rtt, AgentArgs: p.agentArgs, Log: log})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	log.Info("availability: starting etcd", "members", 3)
	ec, err := startEtcd(ctx, c, etcdBin, filepath.Join(dir, "etcd"), log)
	if err != nil {
		return nil, err
	}
	defer ec.close()

	isolated, others := c.Sites[0].Name, c.Names()[1:]
	res := &AvailabilityResult{Sites: n, RTT: float64(p.rtt) / float64(time.Millisecond), Isolated: isolated, Others: others,
		EtcdSites: c.Names()[:3], EtcdVersion: ec.version, Rate: p.rate, ClientTimeout: p.timeout.Seconds(),
		BeforeSeconds: p.before.Seconds(), CutSeconds: p.cut.Seconds(), AfterSeconds: p.after.Seconds(), Target: 1}

	// Resources the updates go to: one per far site, scoped to the
	// isolated site and that one.
	var resources []string
	for _, far := range others {
		code, hdr, body, err := c.Do(ctx, isolated, http.MethodPost, "/svc/posts/posts", pairScope(isolated, far), map[string]any{"title": "updated during the cut"})
		if err != nil || code != http.StatusCreated {
			return nil, fmt.Errorf("bench: create the resource to update: %d %s %v", code, tail(string(body), 300), err)
		}
		resources = append(resources, hdr.Get("X-Cheops-Resource"))
	}

	cheopsWrite := func(ctx context.Context, i int) writeOutcome {
		far := others[i/2%len(others)]
		var code int
		var hdr http.Header
		var body []byte
		var err error
		if i%2 == 0 {
			code, hdr, body, err = c.Do(ctx, isolated, http.MethodPost, "/svc/posts/posts", pairScope(isolated, far), map[string]any{"title": "write", "n": i})
		} else {
			code, hdr, body, err = c.Do(ctx, isolated, http.MethodPatch, "/svc/posts/posts/"+resources[i/2%len(others)], "", map[string]any{"n": i})
		}
		switch {
		case err != nil:
			return writeOutcome{err: errKind(err)}
		case code/100 != 2:
			return writeOutcome{err: fmt.Sprintf("%d %s", code, tail(strings.TrimSpace(string(body)), 60))}
		}
		sites := hdr.Get("X-Cheops-Sites")
		if !strings.Contains(sites, isolated+"=2") {
			return writeOutcome{err: "local part not done: " + sites}
		}
		return writeOutcome{ok: true, farPending: strings.Contains(sites, far+"=pending")}
	}
	etcdWrite := func(ctx context.Context, i int) writeOutcome {
		return ec.put(ctx, 0, fmt.Sprintf("/bench/%d", i), fmt.Sprintf("write %d", i))
	}

	var leader string
	outcomes, healAt, err := drive(ctx, p, log, []func(context.Context, int) writeOutcome{cheopsWrite, etcdWrite}, func() {
		leader = ec.leader(ctx)
		c.Net.Cut([]string{isolated}, others)
	}, c.Net.Heal)
	if err != nil {
		return nil, err
	}
	res.EtcdLeader = leader
	res.Cheops = tally("cheops", outcomes[0], healAt)
	res.Etcd = tally("etcd "+ec.version, outcomes[1], healAt)
	res.Met = res.Cheops.During.Issued > 0 && res.Cheops.During.Accepted == res.Cheops.During.Issued
	res.PromptTarget = 0.99
	res.PromptMet = res.Cheops.During.Issued > 0 && float64(res.Cheops.WithinSecond) >= res.PromptTarget*float64(res.Cheops.During.Issued)
	if !res.Met {
		res.Note = fmt.Sprintf("cheops accepted %d of %d writes on the isolated site during the cut (%.1f%% short of the target)",
			res.Cheops.During.Accepted, res.Cheops.During.Issued, 100*(1-res.Cheops.During.Share))
	}
	return res, nil
}

func pairScope(a, b string) string { return "{posts: " + a + " & " + b + "}" }

// atHealWindow is the end of the cut whose writes are judged in no phase:
// the promptness criterion's second, so that every judged write issued
// during the cut and answered within it was answered before the heal.
const atHealWindow = time.Second

// writeOutcome is the fate of one write.
type writeOutcome struct {
	phase      int // 0 before the cut, 1 during, 2 after the heal, 3 in the cut's last second
	t          time.Duration
	latency    time.Duration
	ok         bool
	farPending bool
	err        string
}

// drive sends writes to every system at p.rate, open loop, through three
// phases: before the cut, between cut() and heal(), after. It returns each
// system's outcomes once every write has finished, and when the heal was
// made (from the start).
func drive(ctx context.Context, p availabilityProfile, log *slog.Logger, systems []func(context.Context, int) writeOutcome, cut, heal func()) ([][]writeOutcome, time.Duration, error) {
	out := make([][]writeOutcome, len(systems))
	var mu sync.Mutex
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Duration(float64(time.Second) / p.rate))
	defer tick.Stop()
	start := time.Now()
	phaseEnd := []time.Time{start.Add(p.before), start.Add(p.before + p.cut), start.Add(p.before + p.cut + p.after)}
	phase := 0
	var healAt time.Duration
	log.Info("availability: writing", "phase", "before the cut", "for", p.before)
	for i := 0; ; i++ {
		now := time.Now()
		for phase < 3 && !now.Before(phaseEnd[phase]) {
			phase++
			switch phase {
			case 1:
				cut()
				log.Info("availability: writing", "phase", "during the cut", "for", p.cut)
			case 2:
				heal()
				healAt = time.Since(start)
				log.Info("availability: writing", "phase", "after the heal", "for", p.after)
			}
		}
		if phase == 3 {
			break
		}
		judged := phase
		if phase == 1 && !now.Before(phaseEnd[1].Add(-atHealWindow)) {
			judged = 3
		}
		for k, write := range systems {
			wg.Add(1)
			go func(k, i, phase int, issued time.Time) {
				defer wg.Done()
				wctx, cancel := context.WithTimeout(ctx, p.timeout)
				defer cancel()
				o := write(wctx, i)
				o.phase, o.t, o.latency = phase, issued.Sub(start), time.Since(issued)
				mu.Lock()
				out[k] = append(out[k], o)
				mu.Unlock()
			}(k, i, judged, now)
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil, 0, ctx.Err()
		case <-tick.C:
		}
	}
	log.Info("availability: waiting for the last writes", "at most", p.timeout)
	wg.Wait()
	return out, healAt, nil
}

// tally sums one system's outcomes. A write issued during the cut counts
// as accepted only when its success was answered before the heal: one that
// waited for the heal to commit was not available on the isolated site.
// Writes issued in the cut's last second are counted apart (AtHeal).
func tally(system string, outs []writeOutcome, healAt time.Duration) SystemAvailability {
	s := SystemAvailability{System: system, Errors: map[string]int{}}
	slices.SortFunc(outs, func(a, b writeOutcome) int { return int(a.t - b.t) })
	var before, during []float64
	for _, o := range outs {
		t := []*WriteTally{&s.Before, &s.During, &s.After, &s.AtHeal}[o.phase]
		t.Issued++
		sec := int(o.t / time.Second)
		for len(s.Timeline) <= sec {
			s.Timeline = append(s.Timeline, TimelinePoint{T: float64(len(s.Timeline))})
		}
		s.Timeline[sec].Issued++
		if o.phase == 3 {
			if o.ok {
				t.Accepted++
				s.Timeline[sec].Accepted++
			}
			continue
		}
		if o.ok && o.phase == 1 && o.t+o.latency > healAt {
			o.ok, o.err = false, "answered only after the heal"
		}
		if !o.ok {
			s.Errors[o.err]++
			continue
		}
		t.Accepted++
		s.Timeline[sec].Accepted++
		ms := float64(o.latency) / float64(time.Millisecond)
		switch o.phase {
		case 0:
			before = append(before, ms)
		case 1:
			during = append(during, ms)
			if ms <= 1000 {
				s.WithinSecond++
			}
			if o.farPending {
				s.FarPending++
			}
		}
	}
	for _, t := range []*WriteTally{&s.Before, &s.During, &s.After, &s.AtHeal} {
		if t.Issued > 0 {
			t.Share = math.Round(float64(t.Accepted)/float64(t.Issued)*1000) / 1000
		}
	}
	s.LatencyBefore, s.LatencyDuring = summarise(before), summarise(during)
	if len(s.Errors) == 0 {
		s.Errors = nil
	}
	return s
}

// errKind names a transport error briefly.
func errKind(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer within the client timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer within the client timeout"
	}
	return tail(err.Error(), 80)
}

// etcdCluster is three etcd members on the first three sites of a
// cluster, their peer traffic through the cluster's emulated WAN.
type etcdCluster struct {
	version string
	clients []string // http://host:port of each member's client API
	procs   []*exec.Cmd
	exited  []chan struct{}
	logs    []*lockedBuffer
	gate    *ProcessGate
	http    *http.Client
}

func startEtcd(ctx context.Context, c *Cluster, bin, dir string, log *slog.Logger) (*etcdCluster, error) {
	ec := &etcdCluster{gate: NewProcessGate(c, log), http: &http.Client{}}
	ok := false
	defer func() {
		if !ok {
			ec.close()
		}
	}()
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 3 {
			ec.version = f[2]
		}
	}
	type member struct{ name, peerListen, peerURL, client string }
	var members []member
	var initial []string
	for i := range 3 {
		s := c.Sites[i]
		ports, err := freePorts(s.ip, 2)
		if err != nil {
			return nil, err
		}
		m := member{name: s.Name, peerListen: net.JoinHostPort(s.ip, ports[0]), client: "http://" + net.JoinHostPort(s.ip, ports[1])}
		adv, err := ec.gate.Expose(i, m.peerListen)
		if err != nil {
			return nil, err
		}
		m.peerURL = "http://" + adv
		members = append(members, m)
		initial = append(initial, m.name+"="+m.peerURL)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	for i, m := range members {
		data := filepath.Join(dir, m.name)
		if err := os.MkdirAll(data, 0o700); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		cmd := exec.Command(bin, "--name", m.name, "--data-dir", data,
			"--listen-peer-urls", "http://"+m.peerListen, "--initial-advertise-peer-urls", m.peerURL,
			"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "cheops-bench",
			"--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn")
		logs := &lockedBuffer{}
		cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, data, logs, logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("bench: start etcd on %s: %w", m.name, err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		ec.gate.Register(cmd.Process.Pid, i)
		ec.procs, ec.exited, ec.logs = append(ec.procs, cmd), append(ec.exited, exited), append(ec.logs, logs)
		ec.clients = append(ec.clients, m.client)
	}
	for i := range members {
		if err := waitFor(ctx, time.Minute, "etcd member "+members[i].name+" accepts a put", func() error {
			select {
			case <-ec.exited[i]:
				return fmt.Errorf("etcd exited: %s", tail(ec.logs[i].String(), 1500))
			default:
			}
			pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if o := ec.put(pctx, i, "/bench/ready", members[i].name); !o.ok {
				return errors.New(o.err)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	ok = true
	return ec, nil
}

// put writes key through member i with the v3 JSON gateway.
func (ec *etcdCluster) put(ctx context.Context, i int, key, value string) writeOutcome {
	body, _ := json.Marshal(map[string]string{"key": base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString([]byte(value))})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ec.clients[i]+"/v3/kv/put", bytes.NewReader(body))
	if err != nil {
		return writeOutcome{err: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ec.http.Do(req)
	if err != nil {
		return writeOutcome{err: errKind(err)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return writeOutcome{err: fmt.Sprintf("%d %s", resp.StatusCode, tail(msg, 60))}
	}
	var ans struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal(b, &ans); err != nil || ans.Header.Revision == "" {
		return writeOutcome{err: "put answered without a revision: " + tail(string(b), 60)}
	}
	return writeOutcome{ok: true}
}

// leader returns the site of the member that leads now, as the members
// report it; "" when unknown.
func (ec *etcdCluster) leader(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ids := map[string]int{}
	var lead string
	for i, u := range ec.clients {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u+"/v3/maintenance/status", strings.NewReader("{}"))
		if err != nil {
			continue
		}
		resp, err := ec.http.Do(req)
		if err != nil {
			continue
		}
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		ids[st.Header.MemberID] = i
		if st.Leader != "" && st.Leader != "0" {
			lead = st.Leader
		}
	}
	if i, ok := ids[lead]; ok && lead != "" {
		return ec.gate.c.Sites[i].Name
	}
	return ""
}

// close stops the members and the gate.
func (ec *etcdCluster) close() {
	for i, p := range ec.procs {
		_ = p.Process.Kill()
		<-ec.exited[i]
	}
	ec.gate.Close()
	ec.http.CloseIdleConnections()
}

// Table writes the shares of both systems in every phase, beside the
// target.
func (r *AvailabilityResult) Table(w io.Writer) {
	fmt.Fprintf(w, "availability: %s cut off from %s for %.0f s (%d sites, agent processes, emulated WAN at %.0f ms RTT)\n",
		r.Isolated, strings.Join(r.Others, ", "), r.CutSeconds, r.Sites, r.RTT)
	fmt.Fprintf(w, "writes from %s to each system: %.0f/s, open loop, %.0f s client timeout; %.0f s before the cut, %.0f s after the heal\n",
		r.Isolated, r.Rate, r.ClientTimeout, r.BeforeSeconds, r.AfterSeconds)
	fmt.Fprintf(w, "cheops: creates and updates scoped to %s and one far site; etcd %s: puts through the member on %s (members on %s, leader at the cut: %s)\n\n",
		r.Isolated, r.EtcdVersion, r.Isolated, strings.Join(r.EtcdSites, ", "), orNone(r.EtcdLeader))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tbefore\tduring the cut\tafter the heal\twithin 1 s (cut)\taccepted p50 ms (cut)\tp99 ms (cut)\t")
	for _, s := range []SystemAvailability{r.Cheops, r.Etcd} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.1f\t%.1f\t\n", s.System, share(s.Before), share(s.During), share(s.After),
			s.WithinSecond, s.LatencyDuring.P50, s.LatencyDuring.P99)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintf(w, "local writes accepted on the isolated site during the cut: cheops %.1f%% (target %.0f%%): %s; etcd %.1f%% beside it\n",
		100*r.Cheops.During.Share, 100*r.Target, Verdict(r.Met), 100*r.Etcd.During.Share)
	within := 0.0
	if r.Cheops.During.Issued > 0 {
		within = 100 * float64(r.Cheops.WithinSecond) / float64(r.Cheops.During.Issued)
	}
	fmt.Fprintf(w, "isolated site's writes answered within 1 s during the cut: cheops %.1f%% (target %.0f%%): %s; p99 %.1f ms (etcd answered %d)\n",
		within, 100*r.PromptTarget, Verdict(r.PromptMet), r.Cheops.LatencyDuring.P99, r.Etcd.WithinSecond)
	fmt.Fprintf(w, "cheops writes accepted during the cut with the far site recorded pending: %d\n", r.Cheops.FarPending)
	fmt.Fprintf(w, "issued in the cut's last second, answered around the heal and judged in no phase: cheops %s, %s %s\n",
		share(r.Cheops.AtHeal), r.Etcd.System, share(r.Etcd.AtHeal))
	for _, s := range []SystemAvailability{r.Cheops, r.Etcd} {
		keys := make([]string, 0, len(s.Errors))
		for k := range s.Errors {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %s refused %d: %s\n", s.System, s.Errors[k], k)
		}
	}
	if r.Note != "" {
		fmt.Fprintln(w, "note:", r.Note)
	}
}

func share(t WriteTally) string {
	if t.Issued == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d %.1f%%", t.Accepted, t.Issued, 100*t.Share)
}

var orange = color.RGBA{R: 0xe0, G: 0x6c, B: 0x10, A: 0xff}

func orNone(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Plot draws, second by second, the share of writes each system accepted
// on the isolated site, with the cut and the heal marked.
func (r *AvailabilityResult) Plot(dir, prefix string) ([]string, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Writes accepted on %s, cut off from the others (%.0f ms RTT)", r.Isolated, r.RTT)
	p.X.Label.Text = "seconds (write issued)"
	p.Y.Label.Text = "share accepted"
	p.Y.Min, p.Y.Max = 0, 1.05
	for i, s := range []SystemAvailability{r.Cheops, r.Etcd} {
		var pts plotter.XYs
		for _, tp := range s.Timeline {
			if tp.Issued > 0 {
				pts = append(pts, plotter.XY{X: tp.T + 0.5, Y: float64(tp.Accepted) / float64(tp.Issued)})
			}
		}
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		l.Color = []color.Color{blue, orange}[i]
		l.Width = vg.Points(2)
		p.Add(l)
		p.Legend.Add(s.System, l)
	}
	for _, at := range []float64{r.BeforeSeconds, r.BeforeSeconds + r.CutSeconds} {
		m, err := plotter.NewLine(plotter.XYs{{X: at, Y: 0}, {X: at, Y: 1.05}})
		if err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		m.Color = grey
		m.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(m)
	}
	// Bottom right, raised clear of the lines at 0 during the cut.
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.YOffs = vg.Inch
	path := filepath.Join(dir, prefix+".svg")
	if err := p.Save(8*vg.Inch, 4*vg.Inch, path); err != nil {
		return nil, fmt.Errorf("bench: save plot: %w", err)
	}
	return []string{path}, nil
}

// Missed lists the targets this run missed (for --strict).
func (r *AvailabilityResult) Missed() []string {
	var out []string
	if !r.Met {
		out = append(out, "local writes accepted during the cut")
	}
	if !r.PromptMet {
		out = append(out, "writes answered within 1 s during the cut")
	}
	return out
}
