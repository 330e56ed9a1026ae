// Package catchup executes, on this site, the operations the site owes:
// writes that other sites accepted while this one was unreachable. Each
// owed operation runs exactly once, in the catalog's deterministic order
// (hybrid-logical-clock timestamp, then origin site, then operation id).
//
// # Exactly once
//
// Before running an operation the runner writes an intent to the site's
// local journal (not replicated, synced to disk); once the application has
// answered, the outcome goes into this site's catalog record and the
// intent is removed. After a crash between the two, an intent without an
// outcome means "maybe executed": a create is then looked up in the
// application (an item holding every field the create sent and not yet
// known to the catalog is adopted rather than created again); a replace
// (PUT) or a delete is idempotent and runs again (a delete answered 404
// counts as done).
//
// # Failures
//
// An application's refusal (4xx) is final: recorded as failed with its
// answer, visible in the catalog, not retried. A 5xx or an unreachable
// application is transient: retried with a backoff doubling up to a
// minute, and the resource's later operations wait behind it.
package catchup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/prometheus/client_golang/prometheus"

	"cheops/catalog"
)

// App runs requests on this site's application instances.
// *forward.Forwarder implements it.
type App interface {
	CallLocal(ctx context.Context, service, method, path string, body []byte) (int, []byte, error)
	LocalID(service string, body []byte) (string, bool)
}

// Config describes a runner.
type Config struct {
	Catalog *catalog.Catalog
	App     App
	// Journal keeps intents across crashes: the site's own datastore.
	Journal ds.Datastore
	// Rescan is how often owed operations are looked for even when the
	// catalog reports no change (2 s: a retry or a missed change is picked
	// up quickly at negligible cost).
	Rescan time.Duration
	// MaxBackoff caps the delay between retries of a transient failure.
	MaxBackoff time.Duration
	// Registerer receives the runner's counters (nil: not exported).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Runner executes owed operations until closed.
type Runner struct {
	cfg    Config
	self   string
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	retries map[string]retry // op id → when to try again
	stats   Stats
	outcome *prometheus.CounterVec
}

type retry struct {
	at      time.Time
	backoff time.Duration
}

// Stats counts what the runner did.
type Stats struct {
	Applied int `json:"applied"`
	Failed  int `json:"failed"`
	Retried int `json:"retried"`
	Adopted int `json:"adopted"`
}

var journalPrefix = ds.NewKey("/cheops/catchup/intent")

// Start runs the runner in the background.
func Start(cfg Config) (*Runner, error) {
	if cfg.Catalog == nil || cfg.App == nil || cfg.Journal == nil {
		return nil, errors.New("catchup: catalog, app and journal are required")
	}
	if cfg.Rescan <= 0 {
		cfg.Rescan = 2 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{cfg: cfg, self: cfg.Catalog.Self(), log: log.With("component", "catchup", "site", cfg.Catalog.Self()),
		cancel: cancel, done: make(chan struct{}), retries: map[string]retry{},
		outcome: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cheops_owed_operations_total",
			Help: "Owed operations this site handled, by outcome: applied, failed (4xx, final), retried (5xx or unreachable), superseded, adopted (after a crash)."},
			[]string{"outcome"})}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(r.outcome); err != nil {
			cancel()
			return nil, fmt.Errorf("catchup: metrics: %w", err)
		}
	}
	go r.loop(ctx)
	return r, nil
}

// Close stops the runner and waits for the operation in progress.
func (r *Runner) Close() {
	r.cancel()
	<-r.done
}

// Stats returns what the runner has done so far.
func (r *Runner) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func (r *Runner) loop(ctx context.Context) {
	defer close(r.done)
	changes := r.cfg.Catalog.Watch(ctx)
	tick := time.NewTicker(r.cfg.Rescan)
	defer tick.Stop()
	for {
		r.runOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case _, ok := <-changes:
			if !ok {
				return
			}
			// Let a burst of changes settle into one pass.
			if !drain(ctx, changes, 20*time.Millisecond) {
				return
			}
		}
	}
}

// drain consumes changes until none came for quiet; false when the feed
// or the runner ended.
func drain(ctx context.Context, ch <-chan catalog.Change, quiet time.Duration) bool {
	t := time.NewTimer(quiet)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case _, ok := <-ch:
			if !ok {
				return false
			}
			t.Reset(quiet) // Go 1.23+: Reset discards a pending tick

		case <-t.C:
			return true
		}
	}
}

// owed is one operation this site owes, with its resource.
type owed struct {
	res catalog.Resource
	op  catalog.Operation
}

// runOnce executes every owed operation that is due, in order.
func (r *Runner) runOnce(ctx context.Context) {
	list, err := r.cfg.Catalog.List(ctx, catalog.Filter{Site: r.self})
	if err != nil {
		r.log.Error("list resources", "err", err)
		return
	}
	var work []owed
	for _, res := range list {
		pending := res.PerSite[r.self].Pending
		if len(pending) == 0 {
			continue
		}
		want := map[string]bool{}
		for _, id := range pending {
			want[id] = true
		}
		for _, op := range res.Operations {
			if want[op.ID] {
				work = append(work, owed{res: res, op: op})
			}
		}
	}
	sortOwed(work)
	blocked := map[string]bool{} // resources whose earlier op must go first
	for _, w := range work {
		if ctx.Err() != nil {
			return
		}
		if blocked[w.res.ID] || !r.due(w.op.ID) {
			blocked[w.res.ID] = true
			continue
		}
		if err := r.execute(ctx, w); err != nil {
			blocked[w.res.ID] = true
			r.later(w.op.ID)
			r.log.Warn("owed operation will be retried", "resource", w.res.ID, "op", w.op.ID, "method", w.op.Method, "err", err)
		}
	}
}

func sortOwed(work []owed) {
	less := func(a, b catalog.Operation) bool {
		if c := a.At.Compare(b.At); c != 0 {
			return c < 0
		}
		if a.Origin != b.Origin {
			return a.Origin < b.Origin
		}
		return a.ID < b.ID
	}
	for i := 1; i < len(work); i++ {
		for j := i; j > 0 && less(work[j].op, work[j-1].op); j-- {
			work[j], work[j-1] = work[j-1], work[j]
		}
	}
}

func (r *Runner) due(op string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.retries[op]
	return !ok || time.Now().After(rt.at)
}

func (r *Runner) later(op string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt := r.retries[op]
	rt.backoff = min(max(2*rt.backoff, 500*time.Millisecond), r.cfg.MaxBackoff)
	rt.at = time.Now().Add(rt.backoff)
	r.retries[op] = rt
	r.stats.Retried++
	r.outcome.WithLabelValues("retried").Inc()
}

// staleRun is how long a forwarded operation may run here before the
// catch-up assumes the agent stopped in the middle of it (twice the
// forwarder's per-site timeout).
const staleRun = 20 * time.Second

// errTransient marks a failure worth retrying.
var errTransient = errors.New("transient failure")

// execute runs one owed operation and records its outcome. It returns an
// error only for transient failures.
func (r *Runner) execute(ctx context.Context, w owed) error {
	res, op := w.res, w.op
	local := res.PerSite[r.self].LocalID
	intent := journalPrefix.ChildString(op.ID)
	recovering, err := r.cfg.Journal.Has(ctx, intent)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	isCreate := op.Method == http.MethodPost && local == "" && len(res.Operations) > 0 && res.Operations[0].ID == op.ID
	if !isCreate {
		if by := r.supersededBy(res, op); by != "" {
			return r.record(ctx, res.ID, op.ID, "", catalog.SupersededPrefix+by, "")
		}
	}
	done, ran, err := NewLedger(r.cfg.Journal).Lookup(ctx, op.ID)
	switch {
	case err != nil:
		return err
	case ran && done.Running() && time.Since(done.Started) < staleRun:
		// The forwarded request is running here right now.
		return fmt.Errorf("%w: %s is running for its origin", errTransient, op.ID)
	case ran && done.Running():
		// It began long ago and never finished: the agent stopped in
		// between. Treat it like one of our own intents.
		recovering = true
	case ran:
		// It ran here already, for the request that left it pending: the
		// origin lost the answer, not the operation.
		code := strconv.Itoa(done.Status)
		if isCreate {
			return r.record(ctx, res.ID, op.ID, done.LocalID, code, "")
		}
		return r.record(ctx, res.ID, op.ID, "", code, "")
	}
	var status int
	var body []byte
	switch {
	case isCreate && recovering:
		if id, ok := r.adopt(ctx, res, op); ok {
			r.mu.Lock()
			r.stats.Adopted++
			r.mu.Unlock()
			r.outcome.WithLabelValues("adopted").Inc()
			return r.record(ctx, res.ID, op.ID, id, "201", "")
		}
		fallthrough
	case isCreate:
		if err := r.writeIntent(ctx, intent); err != nil {
			return err
		}
		status, body, err = r.cfg.App.CallLocal(ctx, res.Service, op.Method, op.Path, op.Body)
	case local == "":
		// The creation has not reached this site yet: it comes first.
		return fmt.Errorf("%w: no local id yet for %s", errTransient, res.ID)
	default:
		if err := r.writeIntent(ctx, intent); err != nil {
			return err
		}
		path := strings.Replace(op.Path, res.ID, local, 1)
		status, body, err = r.cfg.App.CallLocal(ctx, res.Service, op.Method, path, op.Body)
	}
	if err != nil || status >= 500 {
		return fmt.Errorf("%w: %d %v", errTransient, status, err)
	}
	crashPoint()
	code := strconv.Itoa(status)
	switch {
	case status >= 200 && status < 300:
		id := ""
		if isCreate {
			var ok bool
			if id, ok = r.cfg.App.LocalID(res.Service, body); !ok {
				return r.record(ctx, res.ID, op.ID, "", "", code+": created resource has no id")
			}
		} else {
			r.replayAfter(ctx, res, op, local)
		}
		return r.record(ctx, res.ID, op.ID, id, code, "")
	case status == http.StatusNotFound && op.Method == http.MethodDelete:
		return r.record(ctx, res.ID, op.ID, "", code, "")
	default:
		return r.record(ctx, res.ID, op.ID, "", "", code+": "+snippet(body))
	}
}

// supersededBy returns the operation that makes an owed one moot on this
// site: for a replace (PUT by default), a later replace already applied
// here (last writer wins by HLC); for any update, a delete already applied
// here (a delete is never undone). Commuting and ordered operations always
// run. Empty when the operation must run.
func (r *Runner) supersededBy(res catalog.Resource, op catalog.Operation) string {
	rec, _ := r.cfg.Catalog.Record(res.ID, r.self)
	appliedHere := func(o catalog.Operation) bool {
		if code, ok := rec.Applied[o.ID]; ok {
			return catalog.Succeeded(code)
		}
		return catalog.Succeeded(o.Outcomes[r.self])
	}
	after := false
	for _, o := range res.Operations {
		if o.ID == op.ID {
			after = true
			continue
		}
		switch {
		case o.Method == http.MethodDelete && op.Method != http.MethodDelete && appliedHere(o):
			return o.ID + " (delete)"
		case after && op.EffectivePolicy() == catalog.PolicyReplace && o.EffectivePolicy() == catalog.PolicyReplace &&
			o.Method != http.MethodDelete && appliedHere(o):
			return o.ID + " (later replace)"
		}
	}
	return ""
}

// replayAfter restores the HLC order after an owed operation ran late:
// every later replace or ordered operation already applied here runs
// again, in order, so that every replica ends as if all had run in HLC
// order. Commuting operations and deletes are not replayed.
func (r *Runner) replayAfter(ctx context.Context, res catalog.Resource, op catalog.Operation, local string) {
	rec, _ := r.cfg.Catalog.Record(res.ID, r.self)
	after := false
	for _, o := range res.Operations {
		if o.ID == op.ID {
			after = true
			continue
		}
		if !after || o.Method == http.MethodDelete || o.EffectivePolicy() == catalog.PolicyCommute {
			continue
		}
		code, ok := rec.Applied[o.ID]
		if !ok {
			code = o.Outcomes[r.self]
		}
		if !catalog.Succeeded(code) {
			continue
		}
		path := strings.Replace(o.Path, res.ID, local, 1)
		if status, _, err := r.cfg.App.CallLocal(ctx, res.Service, o.Method, path, o.Body); err != nil || status >= 300 {
			r.log.Warn("replay of a later operation failed", "resource", res.ID, "op", o.ID, "status", status, "err", err)
		}
	}
}

func (r *Runner) writeIntent(ctx context.Context, key ds.Key) error {
	if err := r.cfg.Journal.Put(ctx, key, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := r.cfg.Journal.Sync(ctx, key); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// record writes the outcome into this site's catalog record, then drops
// the intent.
func (r *Runner) record(ctx context.Context, id, op, localID, applied, failed string) error {
	rec, _ := r.cfg.Catalog.Record(id, r.self)
	rec.Site = r.self
	if localID != "" {
		rec.LocalID = localID
		rec.Status = catalog.StatusOK
	}
	if applied != "" {
		rec.Applied = with(rec.Applied, op, applied)
	}
	if failed != "" {
		rec.Failed = with(rec.Failed, op, failed)
	}
	if err := r.cfg.Catalog.SetSite(ctx, id, rec); err != nil {
		return fmt.Errorf("record outcome: %w", err)
	}
	if err := r.cfg.Journal.Delete(ctx, journalPrefix.ChildString(op)); err != nil {
		r.log.Warn("drop journal intent", "op", op, "err", err)
	}
	r.mu.Lock()
	delete(r.retries, op)
	switch {
	case failed != "":
		r.stats.Failed++
		r.outcome.WithLabelValues("failed").Inc()
	case strings.HasPrefix(applied, catalog.SupersededPrefix):
		r.stats.Applied++
		r.outcome.WithLabelValues("superseded").Inc()
	default:
		r.stats.Applied++
		r.outcome.WithLabelValues("applied").Inc()
	}
	r.mu.Unlock()
	r.log.Info("owed operation executed", "resource", id, "op", op, "applied", applied, "failed", failed)
	return nil
}

func with(m map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for a, b := range m {
		out[a] = b
	}
	out[k] = v
	return out
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// adopt looks for the item a create that may have run before a crash
// left in the application: one holding every field the create sent, with
// an id the catalog does not know yet.
func (r *Runner) adopt(ctx context.Context, res catalog.Resource, op catalog.Operation) (string, bool) {
	var sent map[string]any
	if json.Unmarshal(op.Body, &sent) != nil {
		return "", false
	}
	status, body, err := r.cfg.App.CallLocal(ctx, res.Service, http.MethodGet, res.Collection, nil)
	if err != nil || status != http.StatusOK {
		return "", false
	}
	var items []map[string]any
	if json.Unmarshal(body, &items) != nil {
		return "", false
	}
	for _, it := range items {
		raw, _ := json.Marshal(it)
		id, ok := r.cfg.App.LocalID(res.Service, raw)
		if !ok {
			continue
		}
		if _, known := r.cfg.Catalog.LookupLocal(res.Service, r.self, id); known {
			continue
		}
		if holds(it, sent) {
			return id, true
		}
	}
	return "", false
}

func holds(item, sent map[string]any) bool {
	for k, v := range sent {
		a, _ := json.Marshal(item[k])
		b, _ := json.Marshal(v)
		if !bytes.Equal(a, b) {
			return false
		}
	}
	return true
}

// FailpointEnv names the environment variable that, set to
// "catchup-after-execute", makes the process kill itself (SIGKILL) right
// after an owed operation ran and before its outcome is recorded. Crash
// tests use it to prove that nothing is applied twice; it is never set in
// production.
const FailpointEnv = "CHEOPS_FAILPOINT"

func crashPoint() {
	if os.Getenv(FailpointEnv) == "catchup-after-execute" {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
