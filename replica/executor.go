package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/prometheus/client_golang/prometheus"

	"cheops/catalog"
)

// App runs requests on this site's application instances.
// *forward.Forwarder implements it.
type App interface {
	// Call runs one request on this site's instance of service and
	// returns its answer; an error means no answer (unreachable, timed
	// out). path is inside the service and may carry the content type of
	// a recorded operation in its fragment; header holds the client's
	// headers for a live request (nil for an owed one).
	Call(ctx context.Context, service, method, path string, header http.Header, body []byte) (Answer, error)
	// LocalID reads the id the application gave a resource it created in
	// collection, from its answer.
	LocalID(service, collection string, body []byte) (string, bool)
}

// Answer is an application's answer.
type Answer struct {
	Status int
	Header http.Header
	Body   []byte
}

// Job is one operation to execute at this site.
type Job struct {
	// Op is the operation as the catalog records it: its path names the
	// resource by its global id (translated to this site's local id here).
	Op      catalog.Operation
	Service string
	// Create marks the resource's creating operation; Collection is where
	// its items live (to adopt one left by a crash).
	Create     bool
	Collection string
	// LocalID is this site's local id as the catalog knows it (a copy
	// made by attach), used when the journal has none.
	LocalID string
	// Header holds the client's headers of a live request.
	Header http.Header
	// Owed marks an operation run by catch-up: no client waits for its
	// answer (a superseded one is not read back), and the crash
	// failpoint only fires on those.
	Owed bool
	// Fresh marks a create (Create set) whose resource no earlier run of
	// this process can have journaled: its origin minted the id for this
	// very request, and this is the request's first delivery here (see
	// forward's wireOp.Fresh for a replica's side). The executor then
	// reads nothing of the resource from the journal (its local id and
	// the create's entry, two point reads of absent keys: 8-10 % of an
	// agent's CPU per replicated create); what this process journaled
	// of it is in memory.
	Fresh bool

	// attachBase is set on the creating operation of a copy an attach
	// sends (by Executor.Attach): the version of the last detach that
	// attach knew (see Attach's base). It is journaled with the execution.
	attachBase *catalog.Timestamp
	// begun is when IntendAndBegin journaled the job's begun entry (zero:
	// the execution journals it).
	begun time.Time
	// outcomeLater lets the execution's outcome be journaled with the
	// next batch (journal.putLater) rather than at once, when losing it
	// in a crash is harmless (see finish). Set by the Runner, which
	// writes the batch (Executor.flushOutcomes) before it records the
	// outcomes in the catalog.
	outcomeLater bool
}

// Result is the outcome of a job.
type Result struct {
	// Answer is what the application answered (for a superseded
	// operation: the resource as it stands).
	Answer
	// Outcome is what this site records in the catalog: the status code,
	// or catalog.SupersededPrefix and why. Empty when Failed is set or Err.
	Outcome string
	// Failed says why the application refused the operation: final.
	Failed string
	// LocalID is the resource's local id here (after a create).
	LocalID string
	// Duplicate: the operation had run here already; Answer holds only
	// its status.
	Duplicate bool
	// Err is a transient failure (no answer, a 5xx, the creation not
	// here yet): the operation stays owed and is retried.
	Err error
}

// OK reports whether the application accepted the operation (2xx), or it
// was superseded by one it accepted.
func (r Result) OK() bool {
	return r.Err == nil && r.Failed == "" && r.Outcome != ""
}

// ErrNotCreated is the transient failure of an operation on a resource
// whose creation has not run at this site yet.
var ErrNotCreated = errors.New("replica: the resource is not created at this site yet")

// errApp wraps a transient failure of the application.
var errApp = errors.New("replica: application")

// Config describes an executor.
type Config struct {
	App App
	// Journal is the site's own (not replicated) datastore; Sync must
	// make earlier writes durable.
	Journal ds.Datastore
	// Known reports whether the catalog maps a local id of a service at
	// this site to a resource (adoption skips those). Nil: none known
	// beyond the journal's.
	Known func(service, localID string) bool
	// Registerer receives the executor's and runner's metrics (nil: none).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Executor executes operations at this site in the catalog's order. Safe
// for concurrent use: operations of one resource are serialized, those of
// different resources run in parallel.
type Executor struct {
	cfg     Config
	journal journal
	log     *slog.Logger

	mu        sync.Mutex
	resources map[string]*resourceState

	ops      *prometheus.CounterVec
	replayed prometheus.Counter
	running  prometheus.Gauge
	queued   prometheus.Gauge
}

// resourceState is what this site applied to one resource, loaded from
// the journal on first use: the whole of it (loaded), or for a lone create
// only the local id and the create's own entry (localKnown; see loadFor).
type resourceState struct {
	mu         sync.Mutex
	loaded     bool // every entry of the journal is in entries
	localKnown bool // local is the journal's
	local      string
	entries    map[string]*entry
	// localSeen is local, for knownLocals, which reads it without mu
	// (under another resource's lock).
	localSeen atomic.Value
}

// setLocal sets the resource's local id (rs.mu held).
func (rs *resourceState) setLocal(local string) {
	rs.local = local
	rs.localSeen.Store(local)
}

// NewExecutor returns an executor over cfg's application and journal.
func NewExecutor(cfg Config) (*Executor, error) {
	if cfg.App == nil || cfg.Journal == nil {
		return nil, errors.New("replica: application and journal are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	x := &Executor{cfg: cfg, journal: journal{store: cfg.Journal, later: &outbox{}}, log: log.With("component", "replica"), resources: map[string]*resourceState{},
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cheops_replica_operations_total",
			Help: "Operations this site's executor handled, by outcome: applied, failed (4xx, final), superseded, duplicate (ran before), adopted (after a crash), retried (transient failure)."},
			[]string{"outcome"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "cheops_replica_replayed_total",
			Help: "Operations run again after a late one, to restore the catalog's order."}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cheops_replica_running",
			Help: "Operations being executed on this site's applications now."}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cheops_replica_queued",
			Help: "Owed operations found in the catalog and not executed yet."}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{x.ops, x.replayed, x.running, x.queued} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("replica: metrics: %w", err)
			}
		}
	}
	return x, nil
}

func (x *Executor) state(res string) *resourceState {
	x.mu.Lock()
	defer x.mu.Unlock()
	rs, ok := x.resources[res]
	if !ok {
		rs = &resourceState{}
		x.resources[res] = rs
	}
	return rs
}

// Applied reports the outcome this site recorded for an operation, if it
// has run here (the journal's word, whatever the catalog says yet).
func (x *Executor) Applied(ctx context.Context, res, op string) (Result, bool, error) {
	rs := x.state(res)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if err := x.load(ctx, res, rs); err != nil {
		return Result{}, false, err
	}
	e, ok := rs.entries[op]
	if !ok || e.State != stateDone {
		return Result{}, false, nil
	}
	return e.result(), true, nil
}

func (x *Executor) load(ctx context.Context, res string, rs *resourceState) error {
	if rs.loaded {
		return nil
	}
	local, entries, err := x.journal.load(ctx, res)
	if err != nil {
		return err
	}
	for id, e := range rs.entries {
		if got := entries[id]; e.early && got != nil && got.State == stateBegun {
			got.early = true // begun by BeginOwed, not called yet
		}
	}
	// The journal holds every entry rs knows of: each is journaled before
	// it is kept.
	rs.entries, rs.loaded, rs.localKnown = entries, true, true
	rs.setLocal(local)
	return nil
}

// loadFor reads what a resource's creating operation op needs of the
// journal: this site's local id of the resource and op's own entry. A
// create looks at nothing else (whether it ran here, and a copy already
// here), so a lone create (the live one, every time a resource is made)
// reads two keys instead of scanning the resource's journal (a point
// read and a range scan before). Anything else
// done on the resource later loads the rest (load), which holds what the
// create journaled.
func (x *Executor) loadFor(ctx context.Context, res, op string, rs *resourceState) error {
	if rs.loaded {
		return nil
	}
	if !rs.localKnown {
		local, err := x.journal.local(ctx, res)
		if err != nil {
			return err
		}
		rs.localKnown = true
		rs.setLocal(local)
	}
	if rs.entries == nil {
		rs.entries = map[string]*entry{}
	}
	if _, ok := rs.entries[op]; ok {
		return nil
	}
	e, err := x.journal.entry(ctx, res, op)
	if err != nil {
		return err
	}
	if e != nil {
		rs.entries[op] = e
	}
	return nil
}

// freshLoad is loadFor for a Fresh create: the journal holds nothing of
// the resource that rs does not (an empty journal but what this process
// wrote, each entry kept in rs as it is journaled), so nothing is read.
func freshLoad(_ context.Context, _ string, rs *resourceState) error {
	if rs.loaded {
		return nil
	}
	rs.localKnown = true // rs.local is "" or what this process journaled
	if rs.entries == nil {
		rs.entries = map[string]*entry{}
	}
	return nil
}

func (e *entry) result() Result {
	return Result{Answer: Answer{Status: e.Status}, Outcome: e.Outcome, Failed: e.Failed, LocalID: e.LocalID}
}

// Apply executes one operation at this site, in the catalog's order, at
// most once (see the package doc). It blocks while another operation of
// the same resource runs here. A transient failure is in Result.Err.
func (x *Executor) Apply(ctx context.Context, j Job) Result {
	return x.ApplyOwed(ctx, []Job{j})[0]
}

// ApplyOwed executes, in order, operations of one resource that this
// site owes (catch-up), with the same rule as Apply, and returns one
// result per job up to the first transient failure (the rest stay owed).
// The difference is the replay: Apply runs, after each late operation,
// every later one already applied here, so k late operations interleaved
// with k applied ones cost about k² calls; ApplyOwed runs each applied
// operation again once, at its place between the late ones, which leaves
// the application in the same state (the catalog's order from the first
// late operation on).
func (x *Executor) ApplyOwed(ctx context.Context, jobs []Job) []Result {
	if len(jobs) == 0 {
		return nil
	}
	rs := x.state(jobs[0].Op.Resource)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	load := x.load
	switch {
	case len(jobs) == 1 && jobs[0].Create && jobs[0].Fresh:
		load = freshLoad
	case len(jobs) == 1 && jobs[0].Create:
		load = func(ctx context.Context, res string, rs *resourceState) error {
			return x.loadFor(ctx, res, jobs[0].Op.ID, rs)
		}
	}
	if err := load(ctx, jobs[0].Op.Resource, rs); err != nil {
		return []Result{{Err: err}}
	}
	var pending []catalog.Operation // applied operations to run again, in order
	flushBefore := func(j Job, op *catalog.Operation) {
		n := 0
		for n < len(pending) && (op == nil || catalog.CompareOps(pending[n], *op) < 0) {
			x.replay(ctx, j, pending[n], rs.local)
			n++
		}
		pending = pending[n:]
	}
	results := make([]Result, 0, len(jobs))
	for _, j := range jobs {
		prev, seen := rs.entries[j.Op.ID]
		if seen && prev.early {
			seen = false // journaled ahead by BeginOwed: not run yet
		}
		if seen && prev.State == stateDone {
			x.ops.WithLabelValues("duplicate").Inc()
			r := prev.result()
			r.Duplicate = true
			results = append(results, r)
			continue
		}
		flushBefore(j, &j.Op)
		x.running.Inc()
		var r Result
		if j.Create {
			r = x.create(ctx, j, rs, seen) // begun and never finished: it may have run
		} else {
			if seen && j.Op.EffectivePolicy() == catalog.PolicyCommute {
				// Begun and never finished (a crash, no answer): it may have
				// been applied, and runs again (at least once; docs/consistency.md).
				x.log.Warn("a commuting operation that may have been applied runs again", "resource", j.Op.Resource, "op", j.Op.ID)
			}
			var replay []catalog.Operation
			r, replay = x.update(ctx, j, rs)
			pending = mergeOps(pending, replay)
			if j.Op.Method == http.MethodDelete && r.OK() {
				pending = nil // nothing runs after a delete
			}
		}
		x.running.Dec()
		if r.Err != nil {
			x.ops.WithLabelValues("retried").Inc()
			flushBefore(j, nil)
			return append(results, r)
		}
		results = append(results, r)
	}
	flushBefore(jobs[len(jobs)-1], nil)
	return results
}

// BeginOwed journals ahead, in one synced write, the begun entries of
// owed creates that the caller is about to apply (ApplyOwed), one after
// the other: each create's own synced write before its call (an fsync,
// the costliest step of an owed create) becomes a share of one. Only
// creates of which nothing is journaled here are begun; the others, and
// every job when the write fails (logged), journal their own entry when
// applied, as without BeginOwed.
//
// An entry begun ahead reads, in the journal, as a create that may have
// run: should the process stop before applying it, the next run looks
// for its item in the application before creating it, as for any
// maybe-executed create (a look-up of the collection per create begun
// and not run: the caller keeps the jobs begun together few). This
// process knows it has not run, and ApplyOwed calls it as a create that
// was never begun.
func (x *Executor) BeginOwed(ctx context.Context, jobs []Job) {
	type begin struct {
		j  Job
		rs *resourceState
	}
	var todo []begin
	for _, j := range jobs {
		if j.Create && j.LocalID == "" && j.attachBase == nil {
			todo = append(todo, begin{j, x.state(j.Op.Resource)})
		}
	}
	// The resources' locks, in order (no two callers wait for each other),
	// so that nothing journals an entry of theirs in between.
	slices.SortFunc(todo, func(a, b begin) int { return strings.Compare(a.j.Op.Resource, b.j.Op.Resource) })
	todo = slices.CompactFunc(todo, func(a, b begin) bool { return a.j.Op.Resource == b.j.Op.Resource })
	for _, b := range todo {
		b.rs.mu.Lock()
		defer b.rs.mu.Unlock()
	}
	keys := make([]ds.Key, 0, len(todo))
	vals := make([]any, 0, len(todo))
	begun := make([]begin, 0, len(todo))
	now := time.Now().UTC()
	for _, b := range todo {
		if err := x.loadFor(ctx, b.j.Op.Resource, b.j.Op.ID, b.rs); err != nil {
			continue // its own call journals it, or says why not
		}
		if b.rs.local != "" || b.rs.entries[b.j.Op.ID] != nil {
			continue // made here already, or journaled: not a plain create
		}
		keys = append(keys, opEntryKey(b.j.Op.Resource, b.j.Op.ID))
		vals = append(vals, &entry{Op: b.j.Op, State: stateBegun, Started: now})
		begun = append(begun, b)
	}
	if len(keys) == 0 {
		return
	}
	start := time.Now()
	if err := x.journal.putAll(ctx, keys, vals); err != nil {
		x.log.Warn("journal owed creates ahead", "creates", len(keys), "err", err)
		return
	}
	x.log.Debug("owed creates journaled ahead", "creates", len(keys), "took", time.Since(start))
	for i, b := range begun {
		e := vals[i].(*entry)
		e.early = true
		b.rs.entries[b.j.Op.ID] = e
	}
}

// mergeOps returns the union of two ordered lists of operations, in order,
// each operation once.
func mergeOps(a, b []catalog.Operation) []catalog.Operation {
	out := make([]catalog.Operation, 0, len(a)+len(b))
	seen := make(map[string]bool, len(a)+len(b))
	for _, o := range slices.Concat(a, b) {
		if !seen[o.ID] {
			seen[o.ID] = true
			out = append(out, o)
		}
	}
	slices.SortFunc(out, catalog.CompareOps)
	return out
}

// create runs a resource's creating operation.
func (x *Executor) create(ctx context.Context, j Job, rs *resourceState, maybe bool) Result {
	local := rs.local
	if local == "" {
		local = j.LocalID
	}
	if local != "" && !maybe {
		// The site holds the resource already (a copy made by attach).
		return x.finish(ctx, j, rs, &entry{Op: j.Op, Status: http.StatusCreated, Outcome: strconv.Itoa(http.StatusCreated), LocalID: local})
	}
	if maybe {
		id, ok, err := x.find(ctx, j)
		if err != nil {
			return Result{Err: err} // not known whether it ran: never run it blind
		}
		if ok {
			x.ops.WithLabelValues("adopted").Inc()
			return x.finish(ctx, j, rs, &entry{Op: j.Op, Status: http.StatusCreated, Outcome: strconv.Itoa(http.StatusCreated), LocalID: id})
		}
	}
	ans, err := x.call(ctx, j, rs, j.Op.Method, j.Op.Path, j.Op.Body)
	if err != nil {
		return Result{Err: err}
	}
	e := &entry{Op: j.Op, Status: ans.Status}
	if ok2xx(ans.Status) {
		e.Outcome = strconv.Itoa(ans.Status)
		e.LocalID, _ = x.cfg.App.LocalID(j.Service, j.Collection, ans.Body)
	} else {
		e.Failed = strconv.Itoa(ans.Status) + ": " + snippet(ans.Body)
	}
	r := x.finish(ctx, j, rs, e)
	r.Answer = ans
	return r
}

// update runs a write on a resource created here and returns, with its
// result, the operations applied here that must run again after it (the
// caller runs them).
func (x *Executor) update(ctx context.Context, j Job, rs *resourceState) (Result, []catalog.Operation) {
	local := rs.local
	if local == "" {
		local = j.LocalID
	}
	if local == "" {
		return Result{Err: fmt.Errorf("%w: %s", ErrNotCreated, j.Op.Resource)}, nil
	}
	path := localPath(j.Op.Path, j.Op.Resource, local)
	d := Decide(rs.applied(), j.Op)
	if d.SupersededBy != "" {
		// Not executed: the answer is the resource as it stands, for a
		// client; an owed operation has none to give it to.
		ans := Answer{Status: http.StatusOK}
		if !j.Owed {
			if got, err := x.cfg.App.Call(ctx, j.Service, http.MethodGet, stripType(path), j.Header, nil); err == nil {
				ans = got
			}
		}
		x.ops.WithLabelValues("superseded").Inc()
		r := x.finish(ctx, j, rs, &entry{Op: j.Op, Outcome: catalog.SupersededPrefix + d.SupersededBy, LocalID: local})
		r.Answer = ans
		return r, nil
	}
	ans, err := x.call(ctx, j, rs, j.Op.Method, path, j.Op.Body)
	if err != nil {
		return Result{Err: err}, nil
	}
	e := &entry{Op: j.Op, Status: ans.Status, LocalID: local}
	var replay []catalog.Operation
	switch {
	case ok2xx(ans.Status), ans.Status == http.StatusNotFound && j.Op.Method == http.MethodDelete:
		e.Outcome = strconv.Itoa(ans.Status)
		replay = d.Replay
	default:
		e.Failed = strconv.Itoa(ans.Status) + ": " + snippet(ans.Body)
	}
	r := x.finish(ctx, j, rs, e)
	r.Answer = ans
	if r.Err != nil {
		replay = nil
	}
	return r, replay
}

// replay runs an applied operation again after a late one.
func (x *Executor) replay(ctx context.Context, j Job, o catalog.Operation, local string) {
	if local == "" {
		local = j.LocalID
	}
	x.replayed.Inc()
	ans, err := x.cfg.App.Call(ctx, j.Service, o.Method, localPath(o.Path, o.Resource, local), nil, o.Body)
	if err != nil || ans.Status >= 300 {
		x.log.Warn("replay of a later operation failed", "resource", o.Resource, "op", o.ID, "status", ans.Status, "err", err)
	}
}

// call journals the operation and runs it on the application. A
// transient failure (no answer, 5xx) leaves the entry begun: the next
// attempt treats the operation as maybe executed.
//
// The entry is synced before the call when running the operation twice
// would do harm: a create (a second copy) or a commuting operation (an
// append applied twice). A replace, a merge update or a delete whose entry
// a crash lost is simply run again, as a maybe-executed one would be:
// it is idempotent, and the order rule puts the later operations back
// after it. Those skip the sync, the costliest step of an execution.
func (x *Executor) call(ctx context.Context, j Job, rs *resourceState, method, path string, body []byte) (Answer, error) {
	e := &entry{Op: j.Op, State: stateBegun, Started: time.Now().UTC(), AttachBase: j.attachBase}
	if prev := rs.entries[j.Op.ID]; prev != nil && prev.early {
		e.Started, e.AttachBase = prev.Started, prev.AttachBase // journaled, synced, by BeginOwed
	} else if !j.begun.IsZero() {
		e.Started = j.begun // journaled, synced, with the intent
	} else {
		sync := j.Create || j.Op.EffectivePolicy() == catalog.PolicyCommute
		if err := x.journal.put(ctx, opEntryKey(j.Op.Resource, j.Op.ID), e, sync); err != nil {
			return Answer{}, err
		}
	}
	rs.entries[j.Op.ID] = e
	if j.Owed && x.log.Enabled(ctx, slog.LevelDebug) {
		x.log.Debug("owed operation called", "resource", j.Op.Resource, "op", j.Op.ID)
	}
	ans, err := x.cfg.App.Call(ctx, j.Service, method, path, j.Header, body)
	if err != nil {
		return Answer{}, fmt.Errorf("%w: %v", errApp, err)
	}
	if ans.Status >= 500 {
		return Answer{}, fmt.Errorf("%w: answered %d: %s", errApp, ans.Status, snippet(ans.Body))
	}
	if j.Owed {
		crashPoint(FailCatchupAfterExecute)
	}
	if j.attachBase != nil {
		crashPoint(FailAttachAfterCopy)
	}
	return ans, nil
}

// finish journals an outcome (not synced: a lost outcome makes the
// operation "maybe executed", which recovery handles) and counts it.
//
// An owed operation's outcome (Job.outcomeLater) waits for the runner's
// next batch (flushOutcomes), one write for the outcomes of many, unless
// it is a commuting operation: a crash before the batch is written makes
// each a maybe-executed operation, as a crash before an unsynced write
// did, and that is harmless for a create (looked for in the application
// before it runs again: its begun entry is synced) and an idempotent
// update, not for a commuting one (a maybe-executed update runs again).
// The runner records in the catalog only outcomes whose batch was
// written, so the catalog never says done what the journal does not.
func (x *Executor) finish(ctx context.Context, j Job, rs *resourceState, e *entry) Result {
	e.State = stateDone
	if e.AttachBase == nil {
		e.AttachBase = j.attachBase
	}
	if e.Started.IsZero() {
		e.Started = time.Now().UTC()
	}
	newLocal := e.LocalID != "" && rs.local != e.LocalID && j.Create
	var local []byte
	if newLocal {
		local = []byte(e.LocalID)
	}
	// The local id and the outcome in one write.
	var err error
	if j.outcomeLater && j.attachBase == nil && j.Op.EffectivePolicy() != catalog.PolicyCommute {
		err = x.journal.putLater(ctx, opEntryKey(j.Op.Resource, j.Op.ID), e, localKey(j.Op.Resource), local)
	} else {
		err = x.journal.putWith(ctx, opEntryKey(j.Op.Resource, j.Op.ID), e, localKey(j.Op.Resource), local)
	}
	if err != nil {
		return Result{Err: err}
	}
	if newLocal {
		rs.setLocal(e.LocalID)
	}
	rs.entries[j.Op.ID] = e
	switch {
	case e.Failed != "":
		x.ops.WithLabelValues("failed").Inc()
	case strings.HasPrefix(e.Outcome, catalog.SupersededPrefix):
	default:
		x.ops.WithLabelValues("applied").Inc()
	}
	return e.result()
}

// flushOutcomes writes the outcomes held for a batch (Job.outcomeLater)
// in one write.
func (x *Executor) flushOutcomes(ctx context.Context) error {
	return x.journal.flushLater(ctx)
}

// applied lists the operations that count for the order.
func (rs *resourceState) applied() []catalog.Operation {
	var out []catalog.Operation
	for _, e := range rs.entries {
		if e.applied() {
			out = append(out, e.Op)
		}
	}
	return out
}

// find looks for the item a create that may have run before a crash (or
// whose answer was lost) left in the application: one holding every field
// the create sent, whose local id neither the journal nor the catalog
// gives a resource. An error (no answer, a 5xx) means the application
// could not be asked: the create must not run blind.
func (x *Executor) find(ctx context.Context, j Job) (string, bool, error) {
	var sent map[string]any
	if json.Unmarshal(j.Op.Body, &sent) != nil {
		return "", false, nil
	}
	ans, err := x.cfg.App.Call(ctx, j.Service, http.MethodGet, j.Collection, nil, nil)
	switch {
	case err != nil:
		return "", false, fmt.Errorf("%w: look for %s in %s: %v", errApp, j.Op.Resource, j.Collection, err)
	case ans.Status >= 500:
		return "", false, fmt.Errorf("%w: look for %s in %s: answered %d: %s", errApp, j.Op.Resource, j.Collection, ans.Status, snippet(ans.Body))
	case ans.Status != http.StatusOK:
		return "", false, nil
	}
	var items []map[string]any
	if json.Unmarshal(ans.Body, &items) != nil {
		return "", false, nil
	}
	known := x.knownLocals()
	for i := len(items) - 1; i >= 0; i-- {
		raw, _ := json.Marshal(items[i])
		id, ok := x.cfg.App.LocalID(j.Service, j.Collection, raw)
		if !ok || known[id] || (x.cfg.Known != nil && x.cfg.Known(j.Service, id)) {
			continue
		}
		if holds(items[i], sent) {
			return id, true, nil
		}
	}
	return "", false, nil
}

// knownLocals lists the local ids of resources whose journal is loaded.
func (x *Executor) knownLocals() map[string]bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[string]bool{}
	for _, rs := range x.resources {
		if local, _ := rs.localSeen.Load().(string); local != "" {
			out[local] = true
		}
	}
	return out
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

// localPath names the resource by its local id in an operation's path.
func localPath(path, global, local string) string {
	return strings.Replace(path, global, local, 1)
}

// stripType drops the content type a recorded path carries.
func stripType(path string) string {
	p, _, _ := strings.Cut(path, "#")
	return p
}

func ok2xx(status int) bool { return status >= 200 && status < 300 }

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// FailpointEnv names the environment variable that, set to one of the
// Fail… values, makes the process kill itself (SIGKILL) at that point.
// Crash tests use it to prove that nothing is applied twice; it is never
// set in production.
const FailpointEnv = "CHEOPS_FAILPOINT"

// Failpoints (values of FailpointEnv).
const (
	// FailCatchupAfterExecute: an owed operation ran on the application;
	// its outcome is not journaled nor recorded.
	FailCatchupAfterExecute = "catchup-after-execute"
	// FailAttachAfterCopy: the application made the copy an attach sent;
	// the outcome is not journaled, the attach not stamped.
	FailAttachAfterCopy = "attach-after-copy"
	// FailAttachBeforeStamp: the copy is made and its outcome journaled;
	// the attach's stamp is not.
	FailAttachBeforeStamp = "attach-before-stamp"
)

func crashPoint(point string) {
	if os.Getenv(FailpointEnv) == point {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
