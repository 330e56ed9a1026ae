package replica

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"cheops/catalog"
)

// RunnerConfig describes a runner.
type RunnerConfig struct {
	Catalog  *catalog.Catalog
	Executor *Executor
	// Workers is how many resources catch up at once (16: enough to
	// keep an application busy behind a slow link, few enough not to
	// swamp it; operations of one resource always run one at a time).
	Workers int
	// Rescan is how often owed operations are looked for even when the
	// catalog reports no change (2 s: picks up retries and missed changes
	// at negligible cost).
	Rescan time.Duration
	// MaxBackoff caps the delay between retries of a transient failure.
	MaxBackoff time.Duration
	// FlushEvery is how long the runner waits for more outcomes after
	// the last one before recording them together in one catalog write
	// (10 ms); MaxFlushDelay bounds how long the first waits while more
	// keep coming (100 ms). During a catch-up, outcomes arrive without
	// pause: each write is a delta every member of the group fetches and
	// merges, so fewer, larger ones leave the members' CPU to the
	// operations themselves.
	FlushEvery    time.Duration
	MaxFlushDelay time.Duration
	// Merging, when set, reports whether the catalog's store is fetching
	// and merging blocks from other members (after a heal: the other
	// side's writes). While it does, the workers hold the owed operations
	// back, for at most MaxHold (400 ms) in a row, and again only once it
	// has reported false: on a shared machine the operations (the agent's
	// requests and the application's work, then the outcomes every member
	// merges) took the CPU the merge needed, and the catalogs agreed
	// hundreds of milliseconds later.
	Merging func() bool
	MaxHold time.Duration
	Logger  *slog.Logger
}

// Runner executes, through the executor, the operations the catalog says
// this site owes, and records their outcomes in batches.
//
// A watcher follows the catalog's changes and puts every resource this
// site owes operations on into a ready queue; it never waits for a
// worker, so a change (more operations of a resource being caught up, a
// resource whose retry is due) is seen as it comes rather than once the
// workers took everything before it. Workers take the resource with the
// most owed operations first: one resource's operations run one after
// the other, so the longest chains bound how long a catch-up takes and
// start first, and single operations (creates) fill the other workers. A
// resource is run by one worker at a time; when a change while it ran
// brought an operation owed here that the worker did not run, that
// worker goes on with it at once (any other change, such as another
// site's outcome or a write already applied here, leaves it done). Outcomes go into the next batch
// without waiting for it to be written: until it is, the operations they
// cover are left out of what is owed (recording), so none runs again.
type Runner struct {
	cfg    RunnerConfig
	self   string
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	work  *sync.Cond // signalled when ready gains a resource or the runner closes
	ready readyQueue
	tasks map[string]*task // resources queued or running
	seq   uint64           // order of arrival in ready, among equals
	// recording holds the operations whose outcomes are in a batch not
	// written yet.
	recording map[string]bool
	retryAt   map[string]time.Time // resource → not before
	failures  map[string]int       // resource → transient failures in a row
	retry     chan struct{}        // a retry was set: the watcher re-arms its timer
	rescan    chan struct{}        // outcomes could not be written: look at everything
	idle      chan struct{}        // nothing queued or running: write the batch now
	batch     *outcomeBatch
	busy      int // resources running
	queuedOps int // owed operations of the resources in ready
	closed    bool

	hold holdGate
}

// holdGate holds the workers while the store merges (RunnerConfig.Merging).
type holdGate struct {
	mu    sync.Mutex
	since time.Time // when the hold began (zero: none)
	spent bool      // the hold reached MaxHold: none until merging ends
}

// holdPoll is how often a held worker asks whether the merge goes on.
const holdPoll = 5 * time.Millisecond

// task is a resource in the runner's hands.
type task struct {
	id      string
	res     catalog.Resource // the view to run (queued)
	owed    int              // its owed operations when queued: the priority
	seq     uint64
	index   int  // in ready
	queued  bool // in ready
	running bool // a worker runs it
	again   bool // it changed while running: the worker goes on with it
	// ops are the owed operations its worker runs (or, taken and not
	// started yet, will run): while it runs, a change that owes nothing
	// else here adds no work, and does not make it run again.
	ops map[string]bool
}

// readyQueue is a heap of tasks, the most owed operations first, then the
// first queued.
type readyQueue []*task

func (q readyQueue) Len() int { return len(q) }
func (q readyQueue) Less(i, j int) bool {
	if q[i].owed != q[j].owed {
		return q[i].owed > q[j].owed
	}
	return q[i].seq < q[j].seq
}
func (q readyQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *readyQueue) Push(x any) {
	t := x.(*task)
	t.index = len(*q)
	*q = append(*q, t)
}
func (q *readyQueue) Pop() any {
	old := *q
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	t.index = -1
	return t
}

// outcomeBatch is a set of outcomes written together.
type outcomeBatch struct {
	outs        []catalog.Outcome
	first, last time.Time // when the first and the last outcome came
}

// due reports whether the batch is to be written now: no outcome came
// for quiet, or the first has waited maxDelay.
func (b *outcomeBatch) due(now time.Time, quiet, maxDelay time.Duration) bool {
	return len(b.outs) > 0 && (now.Sub(b.last) >= quiet || now.Sub(b.first) >= maxDelay)
}

// StartRunner runs a runner in the background until Close.
func StartRunner(cfg RunnerConfig) (*Runner, error) {
	if cfg.Catalog == nil || cfg.Executor == nil {
		return nil, errors.New("replica: runner needs a catalog and an executor")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.Rescan <= 0 {
		cfg.Rescan = 2 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = 10 * time.Millisecond
	}
	if cfg.MaxFlushDelay < cfg.FlushEvery {
		cfg.MaxFlushDelay = max(100*time.Millisecond, cfg.FlushEvery)
	}
	if cfg.MaxHold <= 0 {
		cfg.MaxHold = 400 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{cfg: cfg, self: cfg.Catalog.Self(), log: log.With("component", "catchup", "site", cfg.Catalog.Self()),
		ctx: ctx, cancel: cancel, tasks: map[string]*task{}, recording: map[string]bool{},
		retryAt: map[string]time.Time{}, failures: map[string]int{},
		retry: make(chan struct{}, 1), rescan: make(chan struct{}, 1), idle: make(chan struct{}, 1),
		batch: &outcomeBatch{}}
	r.work = sync.NewCond(&r.mu)
	r.wg.Add(2 + cfg.Workers)
	go r.loop(ctx)
	go r.flushLoop(ctx)
	for range cfg.Workers {
		go r.worker()
	}
	return r, nil
}

// Close stops the runner and waits for the operations in progress.
func (r *Runner) Close() {
	r.cancel()
	r.mu.Lock()
	r.closed = true
	r.work.Broadcast()
	r.mu.Unlock()
	r.wg.Wait()
	// The outcomes held for the journal's next batch: otherwise each
	// would be a maybe-executed operation at the next start.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.cfg.Executor.flushOutcomes(ctx); err != nil {
		r.log.Warn("journal the outcomes held for a batch", "err", err)
	}
}

// loop follows the catalog and queues the resources this site owes
// operations on.
func (r *Runner) loop(ctx context.Context) {
	defer r.wg.Done()
	changes := r.cfg.Catalog.Watch(ctx)
	tick := time.NewTicker(r.cfg.Rescan)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	r.scanAll(ctx)
	r.log.Debug("runner started: first scan done")
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r.scanAll(ctx)
		case <-r.rescan:
			r.scanAll(ctx)
		case <-r.retry:
			if next, ok := r.nextRetry(); ok {
				retry.Reset(time.Until(next))
			}
		case <-retry.C:
			for _, id := range r.dueRetries() {
				r.look(ctx, id)
			}
			if next, ok := r.nextRetry(); ok {
				retry.Reset(time.Until(next))
			}
		case ch, ok := <-changes:
			if !ok {
				return
			}
			// Let a burst of changes settle into one pass over the
			// resources they touched (all of them after a resync), but
			// do not wait for a long burst (a returning site's catalog
			// filling up) to end before starting on it.
			ids, all, ok := drain(ctx, changes, ch, 5*time.Millisecond, 20*time.Millisecond)
			if !ok {
				return
			}
			if all {
				r.scanAll(ctx)
				continue
			}
			for id := range ids {
				r.look(ctx, id)
			}
		}
	}
}

// look reads a resource and queues it if this site owes operations on it.
// One that no site owes anything on is not read: most changes a site sees
// are outcomes recorded (its own, or another site's after its catch-up),
// and resolving each resource to find nothing owed cost more than the
// rest of the change's handling.
func (r *Runner) look(ctx context.Context, id string) {
	if !r.cfg.Catalog.Owes(id) {
		return
	}
	if res, err := r.cfg.Catalog.Get(ctx, id); err == nil {
		r.offer(res)
	}
}

// drain collects the resources that changed until none changed for
// quiet, or for at most limit; all reports a resync (changes were
// dropped: look at everything). ok is false when the feed or the runner
// ended.
func drain(ctx context.Context, ch <-chan catalog.Change, first catalog.Change, quiet, limit time.Duration) (ids map[string]bool, all, ok bool) {
	ids = map[string]bool{}
	add := func(c catalog.Change) {
		if c.Kind == catalog.KindResync {
			all = true
		} else if c.ID != "" {
			ids[c.ID] = true
		}
	}
	add(first)
	t := time.NewTimer(quiet)
	defer t.Stop()
	end := time.NewTimer(limit)
	defer end.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, false, false
		case c, open := <-ch:
			if !open {
				return nil, false, false
			}
			add(c)
			t.Reset(quiet)
		case <-t.C:
			return ids, all, true
		case <-end.C:
			return ids, all, true
		}
	}
}

// scanAll looks for owed operations in every resource the catalog lists
// as owing (a set it keeps with every change, not a pass over the whole
// catalog).
func (r *Runner) scanAll(ctx context.Context) {
	for _, id := range r.cfg.Catalog.Owing() {
		r.look(ctx, id)
	}
}

// offer queues a resource with operations this site owes (and does not
// record already), unless it waits for a retry; one running is marked to
// be run again once done.
func (r *Runner) offer(res catalog.Resource) {
	r.mu.Lock()
	defer r.mu.Unlock()
	owed := 0
	for _, op := range res.PerSite[r.self].Pending {
		if !r.recording[op] {
			owed++
		}
	}
	if owed == 0 || r.closed {
		return
	}
	t := r.tasks[res.ID]
	switch {
	case t != nil && t.running:
		if !t.again && r.addsWork(t, res) {
			t.again = true
		}
	case t != nil && t.queued:
		// The latest view, at its new priority.
		r.queuedOps += owed - t.owed
		t.res, t.owed = res, owed
		heap.Fix(&r.ready, t.index)
	case time.Now().Before(r.retryAt[res.ID]):
		// Its retry comes.
	default:
		r.seq++
		t = &task{id: res.ID, res: res, owed: owed, seq: r.seq, queued: true}
		r.tasks[res.ID] = t
		heap.Push(&r.ready, t)
		r.queuedOps += owed
		r.work.Signal()
	}
	r.cfg.Executor.queued.Set(float64(r.queuedOps))
}

// addsWork reports whether a view of a running resource owes here an
// operation its worker does not run (r.mu held).
func (r *Runner) addsWork(t *task, res catalog.Resource) bool {
	for _, op := range res.PerSite[r.self].Pending {
		if !r.recording[op] && !t.ops[op] {
			return true
		}
	}
	return false
}

// owedOps is the set of operations a view owes here, but those whose
// outcomes are being recorded (r.mu held).
func (r *Runner) owedOps(res catalog.Resource) map[string]bool {
	pending := res.PerSite[r.self].Pending
	ops := make(map[string]bool, len(pending))
	for _, op := range pending {
		if !r.recording[op] {
			ops[op] = true
		}
	}
	return ops
}

// worker runs queued resources until the runner closes.
func (r *Runner) worker() {
	defer r.wg.Done()
	for {
		ts, ok := r.take()
		if !ok {
			return
		}
		r.waitMerge(r.ctx)
		if len(ts) > 1 {
			r.begin(ts)
		}
		for i, t := range ts {
			if i > 0 && r.giveBack(ts[i:]) {
				break
			}
			r.run(t)
		}
	}
}

// giveBack puts the resources a worker took together and has not run yet
// back in the queue when a resource with more owed operations waits
// there (queued after the worker took its share): the longest chain
// runs first. Their creates begun ahead stay begun (early) in this
// process, for the worker that takes them.
func (r *Runner) giveBack(rest []*task) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ready) == 0 || r.ready[0].owed <= rest[0].owed || r.closed {
		return false
	}
	for _, t := range rest {
		t.running, t.queued = false, true
		r.busy--
		r.queuedOps += t.owed
		heap.Push(&r.ready, t)
		r.work.Signal()
	}
	r.cfg.Executor.queued.Set(float64(r.queuedOps))
	return true
}

// maxBegin bounds the resources with one owed operation each that a
// worker takes at once, their creates begun in one synced write
// (Executor.BeginOwed): 8 shares an fsync among 8 creates, and leaves at
// most 8 creates per worker (128 with 16 workers) for a restart after a
// crash to look for in the application before running them.
const maxBegin = 8

// take waits for a queued resource and hands it to the caller (false:
// the runner closed). When the resources left have one owed operation
// each and there are more than workers, it hands over a few of them (a
// worker's share of the queue, up to maxBegin), run one after the other:
// their creates are begun together (begin). The last ones queued go one
// per worker, so that the catch-up's tail still runs in parallel (an
// application serves a few requests at once at most: a worker running
// the rest of its share while the others are done leaves it as busy).
func (r *Runner) take() ([]*task, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.ready) == 0 && !r.closed {
		r.work.Wait()
	}
	if r.closed {
		return nil, false
	}
	n := 1
	if r.ready[0].owed == 1 {
		n = min(maxBegin, len(r.ready)/r.cfg.Workers)
	}
	ts := make([]*task, 0, max(n, 1))
	for len(ts) == 0 || len(ts) < n && len(r.ready) > 0 {
		t := heap.Pop(&r.ready).(*task)
		t.queued, t.running, t.ops = false, true, r.owedOps(t.res)
		r.busy++
		r.queuedOps -= t.owed
		ts = append(ts, t)
	}
	r.cfg.Executor.queued.Set(float64(r.queuedOps))
	r.log.Debug("took resources", "n", len(ts), "left", len(r.ready))
	return ts, true
}

// begin journals ahead, together, the creates among resources a worker
// took at once (Executor.BeginOwed).
func (r *Runner) begin(ts []*task) {
	var creates []Job
	r.mu.Lock()
	for _, t := range ts {
		jobs, ok := owedJobs(t.res, r.self, func(op string) bool { return r.recording[op] })
		if ok && len(jobs) == 1 && jobs[0].Create {
			creates = append(creates, jobs[0])
		}
	}
	r.mu.Unlock()
	if len(creates) > 1 {
		r.cfg.Executor.BeginOwed(r.ctx, creates)
	}
}

// run catches a resource up, again as long as it changed meanwhile.
func (r *Runner) run(t *task) {
	res := t.res
	for {
		start := time.Now()
		outs, failed := r.catchUp(r.ctx, t, res)
		r.log.Debug("resource caught up", "resource", t.id, "owed", len(res.PerSite[r.self].Pending), "outcomes", len(outs), "took", time.Since(start))
		r.add(outs)
		r.mu.Lock()
		again := t.again && !failed && r.ctx.Err() == nil
		t.again = false
		if !again {
			t.running = false
			r.busy--
			delete(r.tasks, t.id)
			idle := r.busy == 0 && len(r.ready) == 0
			r.mu.Unlock()
			if idle {
				signal(r.idle)
			}
			if failed {
				// Released: its retry can queue it.
				signal(r.retry)
			}
			return
		}
		r.mu.Unlock()
		fresh, err := r.cfg.Catalog.Get(r.ctx, t.id)
		if err != nil {
			fresh = res // let the next pass say why
		}
		res = fresh
	}
}

// waitMerge returns once the store is not merging (RunnerConfig.Merging),
// the hold began MaxHold ago, or the runner closes. A hold that reached
// its bound lets every worker through until the store stops merging.
func (r *Runner) waitMerge(ctx context.Context) {
	if r.cfg.Merging == nil {
		return
	}
	g := &r.hold
	for {
		merging := r.cfg.Merging()
		g.mu.Lock()
		now := time.Now()
		if !merging {
			if !g.since.IsZero() && !g.spent {
				r.log.Info("held the owed operations while the catalog merged", "held", now.Sub(g.since))
			}
			g.since, g.spent = time.Time{}, false
			g.mu.Unlock()
			return
		}
		if g.spent {
			g.mu.Unlock()
			return
		}
		if g.since.IsZero() {
			g.since = now
			r.log.Debug("holding the owed operations while the catalog merges")
		}
		left := r.cfg.MaxHold - now.Sub(g.since)
		if left <= 0 {
			g.spent = true
			r.log.Info("held the owed operations while the catalog merged: bound reached", "held", now.Sub(g.since))
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		t := time.NewTimer(min(holdPoll, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// nextRetry is the earliest time a resource waits for (not counting one
// still running: see dueRetries).
func (r *Runner) nextRetry() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Time
	for id, at := range r.retryAt {
		if r.tasks[id] == nil && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	return next, !next.IsZero()
}

// dueRetries lists the resources whose retry is due, and forgets their
// wait; one still running (its failure just set the wait) is left for
// the signal its worker sends once it lets it go.
func (r *Runner) dueRetries() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	var ids []string
	for id, at := range r.retryAt {
		if !now.Before(at) && r.tasks[id] == nil {
			ids = append(ids, id)
			delete(r.retryAt, id)
		}
	}
	return ids
}

// owedJobs lists, in order, the operations self owes on a resource (but
// those skip names, when not nil); false
// when the catalog's view of it lacks its creation yet (a DAG is merged
// from its heads down: the meta and later operations can be there a
// moment before the creating operation, and the first operation seen must
// not be taken for the creation).
func owedJobs(res catalog.Resource, self string, skip func(op string) bool) ([]Job, bool) {
	if !res.Complete() {
		return nil, false
	}
	owed := map[string]bool{}
	for _, id := range res.PerSite[self].Pending {
		owed[id] = skip == nil || !skip(id)
	}
	var jobs []Job
	for i, op := range res.Operations {
		if !owed[op.ID] {
			continue
		}
		j := Job{Op: op, Service: res.Service, Create: i == 0, Collection: res.Collection, Owed: true}
		if !j.Create {
			j.LocalID = res.PerSite[self].LocalID
		}
		jobs = append(jobs, j)
	}
	return jobs, true
}

// catchUp runs one resource's owed operations in order and returns their
// outcomes, to be recorded; failed reports a transient failure (the rest
// waits for a retry, with backoff). The operations it runs are t's
// (addsWork).
func (r *Runner) catchUp(ctx context.Context, t *task, res catalog.Resource) (outs []catalog.Outcome, failed bool) {
	r.mu.Lock()
	jobs, ok := owedJobs(res, r.self, func(op string) bool { return r.recording[op] })
	t.ops = make(map[string]bool, len(jobs))
	for _, j := range jobs {
		t.ops[j.Op.ID] = true
	}
	r.mu.Unlock()
	if !ok {
		// Later operations arrived before the creation: the change that
		// brings it queues the resource again.
		r.log.Debug("the resource's creation is not in the catalog yet", "resource", res.ID)
		return nil, false
	}
	for i := range jobs {
		jobs[i].outcomeLater = true // flushLoop writes them before it records them
	}
	results := r.cfg.Executor.ApplyOwed(ctx, jobs)
	for k, out := range results {
		op := jobs[k].Op
		if errors.Is(out.Err, ErrNotCreated) && res.PerSite[r.self].Status == catalog.StatusFailed {
			// Nothing of this resource can run here: every owed
			// operation fails as its creation did.
			for _, j := range jobs[k:] {
				outs = append(outs, catalog.Outcome{Resource: res.ID, Op: j.Op.ID, Failed: "the resource's creation failed at this site"})
			}
			break
		}
		if out.Err != nil {
			failed = true
			if ctx.Err() == nil {
				r.log.Warn("owed operation will be retried", "resource", res.ID, "op", op.ID, "method", op.Method, "err", out.Err)
			}
			break
		}
		outs = append(outs, catalog.Outcome{Resource: res.ID, Op: op.ID, LocalID: out.LocalID, Applied: out.Outcome, Failed: out.Failed})
		r.log.Debug("owed operation executed", "resource", res.ID, "op", op.ID, "outcome", out.Outcome, "failed", out.Failed)
	}
	r.mu.Lock()
	if failed {
		r.failures[res.ID]++
		r.retryAt[res.ID] = time.Now().Add(retryDelay(r.failures[res.ID], r.cfg.MaxBackoff))
	} else {
		delete(r.failures, res.ID)
		delete(r.retryAt, res.ID)
	}
	r.mu.Unlock()
	return outs, failed
}

// retryDelay is how long a resource waits after its nth transient failure
// in a row: none after the first (most are a connection the application
// closed as the request went out: the next one goes through), then 500 ms
// doubling up to maxDelay.
func retryDelay(n int, maxDelay time.Duration) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(500*time.Millisecond<<min(n-2, 16), maxDelay)
}

// add puts outcomes into the next batch: their operations are no longer
// owed here, whatever the catalog says until the batch is written.
func (r *Runner) add(outs []catalog.Outcome) {
	if len(outs) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.batch
	now := time.Now()
	if len(b.outs) == 0 {
		b.first = now
	}
	b.last = now
	b.outs = append(b.outs, outs...)
	for _, o := range outs {
		r.recording[o.Op] = true
	}
}

// flushLoop writes the batches of outcomes: when no outcome came for
// FlushEvery, when the first waited MaxFlushDelay, or at once when the
// runner has nothing left to run.
func (r *Runner) flushLoop(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.FlushEvery)
	defer t.Stop()
	for {
		now := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.idle:
			now = true
		}
		r.mu.Lock()
		b := r.batch
		if len(b.outs) == 0 || !now && !b.due(time.Now(), r.cfg.FlushEvery, r.cfg.MaxFlushDelay) {
			r.mu.Unlock()
			continue
		}
		r.batch = &outcomeBatch{}
		r.mu.Unlock()
		// Journaled first (Job.outcomeLater): the catalog never says
		// done what the journal would not after a crash.
		err := r.cfg.Executor.flushOutcomes(ctx)
		if err == nil {
			err = r.cfg.Catalog.RecordOutcomes(ctx, b.outs)
		}
		// Written, the catalog says so; not written, the operations are
		// owed again (they ran: the journal gives their outcomes), and
		// a resource running now goes on with them (its worker may
		// count them as its own: addsWork).
		r.mu.Lock()
		for _, o := range b.outs {
			delete(r.recording, o.Op)
			if t := r.tasks[o.Resource]; err != nil && t != nil && t.running {
				t.again = true
			}
		}
		r.mu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Error("record outcomes", "outcomes", len(b.outs), "err", err)
				signal(r.rescan)
			}
		}
	}
}
