package replica

import (
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
	// Workers bounds how many resources catch up at once (16: enough to
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
	Logger        *slog.Logger
}

// Runner executes, through the executor, the operations the catalog says
// this site owes, and records their outcomes in batches.
type Runner struct {
	cfg    RunnerConfig
	self   string
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	inFlight map[string]bool // resources being caught up
	// again marks resources that changed while in flight: they are looked
	// at again as soon as their worker is done (redo), rather than at the
	// next rescan, seconds later.
	again   map[string]bool
	redoIDs map[string]bool
	redo    chan struct{}
	retryAt map[string]time.Time // resource → not before
	backoff map[string]time.Duration
	batch   *outcomeBatch
}

// outcomeBatch is a set of outcomes written together; done closes once
// they are in the catalog.
type outcomeBatch struct {
	outs        []catalog.Outcome
	first, last time.Time // when the first and the last outcome came
	done        chan struct{}
	err         error
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
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{cfg: cfg, self: cfg.Catalog.Self(), log: log.With("component", "catchup", "site", cfg.Catalog.Self()),
		cancel: cancel, inFlight: map[string]bool{}, again: map[string]bool{}, redoIDs: map[string]bool{}, redo: make(chan struct{}, 1),
		retryAt: map[string]time.Time{},
		backoff: map[string]time.Duration{}, batch: newBatch()}
	r.wg.Add(2)
	go r.loop(ctx)
	go r.flushLoop(ctx)
	return r, nil
}

func newBatch() *outcomeBatch { return &outcomeBatch{done: make(chan struct{})} }

// Close stops the runner and waits for the operations in progress.
func (r *Runner) Close() {
	r.cancel()
	r.wg.Wait()
}

func (r *Runner) loop(ctx context.Context) {
	defer r.wg.Done()
	changes := r.cfg.Catalog.Watch(ctx)
	tick := time.NewTicker(r.cfg.Rescan)
	defer tick.Stop()
	sem := make(chan struct{}, r.cfg.Workers)
	r.scanAll(ctx, sem)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r.scanAll(ctx, sem)
		case <-r.redo:
			r.mu.Lock()
			ids := r.redoIDs
			r.redoIDs = map[string]bool{}
			r.mu.Unlock()
			for id := range ids {
				if res, err := r.cfg.Catalog.Get(ctx, id); err == nil {
					r.dispatch(ctx, sem, res)
				}
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
				r.scanAll(ctx, sem)
				continue
			}
			for id := range ids {
				if res, err := r.cfg.Catalog.Get(ctx, id); err == nil {
					r.dispatch(ctx, sem, res)
				}
			}
		}
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
func (r *Runner) scanAll(ctx context.Context, sem chan struct{}) {
	queued := 0
	for _, id := range r.cfg.Catalog.Owing() {
		res, err := r.cfg.Catalog.Get(ctx, id)
		if err != nil {
			continue
		}
		queued += len(res.PerSite[r.self].Pending)
		r.dispatch(ctx, sem, res)
	}
	r.cfg.Executor.queued.Set(float64(queued))
}

// dispatch starts a worker for a resource with owed operations, unless
// one runs for it or it waits for a retry.
func (r *Runner) dispatch(ctx context.Context, sem chan struct{}, res catalog.Resource) {
	if len(res.PerSite[r.self].Pending) == 0 {
		return
	}
	r.mu.Lock()
	busy := r.inFlight[res.ID] || time.Now().Before(r.retryAt[res.ID])
	if r.inFlight[res.ID] {
		r.again[res.ID] = true
	}
	if !busy {
		r.inFlight[res.ID] = true
	}
	r.mu.Unlock()
	if busy {
		return
	}
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		r.release(res.ID)
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.release(res.ID)
		outs := r.catchUp(ctx, res)
		// The worker's slot is free once the application is done; the
		// resource stays in flight until its outcomes are recorded, so
		// that a scan meanwhile does not find them owed again.
		<-sem
		if len(outs) > 0 {
			if err := r.record(ctx, outs); err != nil && ctx.Err() == nil {
				r.log.Error("record outcomes", "resource", res.ID, "err", err)
			}
		}
	}()
}

func (r *Runner) release(id string) {
	r.mu.Lock()
	delete(r.inFlight, id)
	again := r.again[id]
	if again {
		delete(r.again, id)
		r.redoIDs[id] = true
	}
	r.mu.Unlock()
	if again {
		select {
		case r.redo <- struct{}{}:
		default:
		}
	}
}

// owedJobs lists, in order, the operations self owes on a resource; false
// when the catalog's view of it lacks its creation yet (a DAG is merged
// from its heads down: the meta and later operations can be there a
// moment before the creating operation, and the first operation seen must
// not be taken for the creation).
func owedJobs(res catalog.Resource, self string) ([]Job, bool) {
	if !res.Complete() {
		return nil, false
	}
	owed := map[string]bool{}
	for _, id := range res.PerSite[self].Pending {
		owed[id] = true
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
// outcomes, to be recorded.
func (r *Runner) catchUp(ctx context.Context, res catalog.Resource) []catalog.Outcome {
	jobs, ok := owedJobs(res, r.self)
	if !ok {
		// Later operations arrived before the creation: the change that
		// brings it dispatches the resource again.
		r.log.Debug("the resource's creation is not in the catalog yet", "resource", res.ID)
		return nil
	}
	var outs []catalog.Outcome
	failed := false
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
			r.log.Warn("owed operation will be retried", "resource", res.ID, "op", op.ID, "method", op.Method, "err", out.Err)
			break
		}
		outs = append(outs, catalog.Outcome{Resource: res.ID, Op: op.ID, LocalID: out.LocalID, Applied: out.Outcome, Failed: out.Failed})
		r.log.Debug("owed operation executed", "resource", res.ID, "op", op.ID, "outcome", out.Outcome, "failed", out.Failed)
	}
	r.mu.Lock()
	if failed {
		b := min(max(2*r.backoff[res.ID], 500*time.Millisecond), r.cfg.MaxBackoff)
		r.backoff[res.ID], r.retryAt[res.ID] = b, time.Now().Add(b)
	} else {
		delete(r.backoff, res.ID)
		delete(r.retryAt, res.ID)
	}
	r.mu.Unlock()
	return outs
}

// record adds outcomes to the next batch and waits until it is written.
func (r *Runner) record(ctx context.Context, outs []catalog.Outcome) error {
	r.mu.Lock()
	b := r.batch
	now := time.Now()
	if len(b.outs) == 0 {
		b.first = now
	}
	b.last = now
	b.outs = append(b.outs, outs...)
	r.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Runner) flushLoop(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		b := r.batch
		if !b.due(time.Now(), r.cfg.FlushEvery, r.cfg.MaxFlushDelay) {
			r.mu.Unlock()
			continue
		}
		r.batch = newBatch()
		r.mu.Unlock()
		b.err = r.cfg.Catalog.RecordOutcomes(ctx, b.outs)
		close(b.done)
	}
}
