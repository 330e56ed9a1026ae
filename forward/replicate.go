package forward

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"time"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/replica"
)

// Headers of the one write path between agents.
const (
	// HeaderOp carries the operation a forwarded write executes (base64
	// of its JSON; the body is the request's): the receiving site's
	// executor orders it among the resource's other operations.
	HeaderOp = "X-Cheops-Op"
	// HeaderOutcome is a site's outcome of an operation: a status code,
	// "superseded by …", "failed", or "pending" when it could not run it
	// yet (it will, from the catalog).
	HeaderOutcome = "X-Cheops-Outcome"
	// HeaderLocalID is the id a site's application gave a created
	// resource.
	HeaderLocalID = "X-Cheops-Local-Id"
	// HeaderReplicaWait overrides, per request, how long a replicated
	// write waits for replicas before answering (a Go duration, "250ms").
	HeaderReplicaWait = "X-Cheops-Replica-Wait"
)

// DefaultMinReplicaWait is the floor of the replica deadline: a replicated
// write waits for every reachable replica at most max(50 ms, 4 × the
// slowest replica's RTT), and at least as long as this site's own
// application took. 50 ms covers a loopback or LAN replica whose
// application answers in a few milliseconds; 4 RTT leaves room for one
// retransmission on a WAN link. A replica that has not answered then is
// recorded pending and gets the operation through its executor.
const DefaultMinReplicaWait = 50 * time.Millisecond

// wireOp is what HeaderOp carries.
type wireOp struct {
	Op         catalog.Operation `json:"op"`
	Create     bool              `json:"create,omitempty"`
	Collection string            `json:"collection,omitempty"`
	// Place, when set, makes the operation a change of the resource's
	// placement at the receiving site (placeAttach, placeDetach: see
	// attach.go); Base and Purge are its arguments.
	Place string            `json:"place,omitempty"`
	Base  catalog.Timestamp `json:"base,omitzero"`
	Purge bool              `json:"purge,omitempty"`
	// Fresh marks a create of a resource its origin minted for the
	// client's request, sent once to each replica (a kept stream closed
	// before it was read sends it again, unread): a replica whose
	// catalog does not hold the resource yet runs it as a replica.Job
	// Fresh, reading nothing of it from its journal. Only the catalog
	// could have brought the create to an earlier run of the replica
	// (its runner executes it from there once the origin recorded it),
	// and what the runner ran is in the catalog after a restart: the
	// execution's synced journal entry follows the merge in the same
	// store's log.
	Fresh bool `json:"fresh,omitempty"`
}

func encodeOp(w wireOp) string {
	w.Op.Body = nil
	data, _ := json.Marshal(w)
	return base64.RawURLEncoding.EncodeToString(data)
}

func decodeOp(s string) (wireOp, error) {
	var w wireOp
	data, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return w, fmt.Errorf("operation header: %w", err)
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return w, fmt.Errorf("operation header: %w", err)
	}
	if !catalog.ValidID(w.Op.Resource) || w.Op.ID == "" || !catalog.ValidID(w.Op.ID) || w.Op.Method == "" {
		return w, fmt.Errorf("operation header: resource %q, operation %q", w.Op.Resource, w.Op.ID)
	}
	return w, nil
}

// write is one replicated write: its operation, where it runs, and for a
// create the resource to record.
type write struct {
	op         catalog.Operation
	create     bool
	collection string
	meta       *catalog.Meta // create only
	reachable  []string      // replicas to send it to now
	pending    []string      // replicas recorded pending from the start
	localIDs   map[string]string
	// fresh: a create of a resource minted here for this request (see
	// wireOp.Fresh).
	fresh bool
	// local is this site's job, when it runs the write (set by replicate
	// with the intent).
	local *replica.Job
}

// replicate runs a write through the one write path: the operation is
// stamped and journaled as this site's intent, sent to every reachable
// replica's executor (this site's included), answered once they answered
// or the replica deadline passed, and recorded in the catalog with each
// site's outcome; replicas that did not answer in time are pending and get
// it from the catalog. It returns the answer to give, the outcomes, and
// whether the operation was recorded.
func (f *Forwarder) replicate(req *request, wr write) (answer result, outcomes map[string]string, recorded bool, err error) {
	self := f.cfg.Membership.Site()
	// The write goes on if the client leaves: it is journaled.
	ctx := context.WithoutCancel(req.r.Context())
	wr.op.Origin = self
	wr.op.At = f.cfg.Catalog.Clock().Now()
	wr.op.Body = req.body
	// The record comes once the replicas answered: writes recorded into
	// the same sites meanwhile may wait for it and share its commit.
	arrived := f.cfg.Catalog.Expect(wr.op.Targets)
	defer arrived()
	in := replica.Intent{Op: wr.op, Meta: wr.meta}
	if slices.Contains(wr.reachable, self) {
		// This site's execution journals its start with the intent.
		local, err := f.exec.IntendAndBegin(ctx, in, f.localJob(ctx, req.svc.Name, wireOp{Op: wr.op, Create: wr.create, Collection: wr.collection, Fresh: wr.fresh}, req.r.Header))
		if err != nil {
			return result{}, nil, false, err
		}
		wr.local = &local
	} else if err := f.exec.Intend(ctx, in); err != nil {
		return result{}, nil, false, err
	}
	results := f.fanOut(ctx, req, wr)

	outcomes = make(map[string]string, len(wr.op.Targets))
	for _, s := range wr.pending {
		outcomes[s] = catalog.OutcomePending
	}
	success, ambiguous := false, len(wr.pending) > 0
	for _, s := range wr.reachable {
		r, ok := results[s]
		if !ok {
			outcomes[s] = catalog.OutcomePending
			ambiguous = true
			continue
		}
		outcomes[s] = r.outcome()
		if r.err != nil {
			ambiguous = true
		}
		if r.ok() {
			success = true
		}
	}
	answer, _ = f.preferred(results)
	if !success && !ambiguous {
		// Every replica refused it: nothing ran, nothing is recorded.
		_ = f.exec.Published(ctx, wr.op.ID)
		return answer, outcomes, false, nil
	}
	wr.op.Outcomes = outcomes
	locals := maps.Clone(wr.localIDs)
	for s, r := range results {
		if r.localID != "" {
			locals = withLocal(locals, s, r.localID)
		}
	}
	arrived()
	if err := f.record(ctx, wr.op, wr.meta, locals); err != nil {
		return answer, outcomes, false, fmt.Errorf("record operation %s: %w", wr.op.ID, err)
	}
	if err := f.exec.Published(ctx, wr.op.ID); err != nil {
		f.log.Warn("drop an intent", "op", wr.op.ID, "err", err)
	}
	return answer, outcomes, true, nil
}

// fanOut sends the write to every reachable replica and collects the
// answers that arrive before the replica deadline (see
// DefaultMinReplicaWait). Late answers are dropped here: those replicas
// record their outcome themselves.
func (f *Forwarder) fanOut(ctx context.Context, req *request, wr write) map[string]result {
	self := f.cfg.Membership.Site()
	answers := make(chan result, len(wr.reachable))
	wire := encodeOp(wireOp{Op: wr.op, Create: wr.create, Collection: wr.collection, Fresh: wr.fresh})
	run := f.runAt
	if run == nil {
		run = f.runAtSite
	}
	for _, s := range wr.reachable {
		f.bg.Add(1)
		go func() {
			defer f.bg.Done()
			answers <- run(ctx, s, req, wr, wire)
		}()
	}
	wait := f.replicaWait(req, wr.reachable)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	out := make(map[string]result, len(wr.reachable))
	localDone := !slices.Contains(wr.reachable, self)
	expired := false
	for len(out) < len(wr.reachable) {
		select {
		case r := <-answers:
			out[r.site] = r
			if r.site == self {
				localDone = true
			}
		case <-timer.C:
			expired = true
		}
		if expired && localDone && len(out) > 0 {
			break
		}
	}
	return out
}

// runAtSite runs a write on one replica: this site's executor, or
// another site's agent with the operation in HeaderOp.
func (f *Forwarder) runAtSite(ctx context.Context, site string, req *request, wr write, wire string) result {
	if site == f.cfg.Membership.Site() {
		if wr.local != nil {
			return f.applyJob(ctx, *wr.local)
		}
		return f.applyLocal(ctx, req.svc.Name, wireOp{Op: wr.op, Create: wr.create, Collection: wr.collection, Fresh: wr.fresh}, req.r.Header)
	}
	extra := http.Header{HeaderOp: {wire}, HeaderResource: {wr.op.Resource}}
	return f.execute(f.stopCtx, site, req, req.r.Method, req.rawPath, extra)
}

// replicaWait is how long a write waits for its replicas: the request's
// HeaderReplicaWait, else the configured wait, else max(50 ms, 4 × the
// slowest reachable replica's RTT).
func (f *Forwarder) replicaWait(req *request, sites []string) time.Duration {
	if h := req.r.Header.Get(HeaderReplicaWait); h != "" {
		if d, err := time.ParseDuration(h); err == nil && d >= 0 {
			return min(d, f.cfg.SiteTimeout)
		}
	}
	if f.cfg.ReplicaWait > 0 {
		return f.cfg.ReplicaWait
	}
	view := f.cfg.Membership.View()
	self := f.cfg.Membership.Site()
	wait := DefaultMinReplicaWait
	for _, s := range sites {
		if rtt, ok := view.RTT(self, s); ok && 4*rtt > wait {
			wait = 4 * rtt
		}
	}
	return min(wait, f.cfg.SiteTimeout)
}

// applyLocal runs an operation through this site's executor.
func (f *Forwarder) applyLocal(ctx context.Context, service string, w wireOp, header http.Header) result {
	return f.applyJob(ctx, f.localJob(ctx, service, w, header))
}

// localJob is the job of an operation at this site.
func (f *Forwarder) localJob(ctx context.Context, service string, w wireOp, header http.Header) replica.Job {
	j := replica.Job{Op: w.Op, Service: service, Create: w.Create, Collection: w.Collection, Header: header, Fresh: w.Create && w.Fresh}
	if !w.Create {
		if res, err := f.cfg.Catalog.Get(ctx, w.Op.Resource); err == nil {
			j.LocalID = res.PerSite[f.cfg.Membership.Site()].LocalID
		}
	}
	return j
}

// applyJob runs a job through this site's executor.
func (f *Forwarder) applyJob(ctx context.Context, j replica.Job) result {
	self := f.cfg.Membership.Site()
	ctx, cancel := context.WithTimeout(ctx, f.cfg.SiteTimeout)
	defer cancel()
	out := f.exec.Apply(ctx, j)
	r := result{site: self, status: out.Status, header: out.Header, body: out.Body, localID: out.LocalID}
	switch {
	case out.Err != nil:
		r.err = out.Err
	case out.Failed != "":
		r.outcomeText = strconv.Itoa(out.Status)
	default:
		r.outcomeText = out.Outcome
		if r.status == 0 {
			r.status = statusOf(out.Outcome)
		}
	}
	if r.header == nil {
		r.header = http.Header{}
	}
	return r
}

func statusOf(outcome string) int {
	if n, err := strconv.Atoi(outcome); err == nil {
		return n
	}
	return http.StatusOK
}

// serveOp executes an operation another site sent (HeaderOp) through this
// site's executor and answers with the application's answer and this
// site's outcome.
func (f *Forwarder) serveOp(w http.ResponseWriter, req *request, header string) {
	wo, err := decodeOp(header)
	if err != nil {
		errcode.Write(w, http.StatusBadRequest, "bad_operation", err.Error())
		return
	}
	if err := f.cfg.Catalog.Clock().Observe(wo.Op.At); err != nil {
		errcode.Write(w, http.StatusBadRequest, "bad_operation", err.Error())
		return
	}
	wo.Op.Body = req.body
	if wo.Place != "" {
		f.servePlace(w, req, wo)
		return
	}
	if wo.Fresh {
		// The runner may have run it from the catalog, in an earlier run.
		_, err := f.cfg.Catalog.Get(req.r.Context(), wo.Op.Resource)
		wo.Fresh = errors.Is(err, catalog.ErrNotFound)
	}
	hdr := req.r.Header.Clone()
	for _, h := range []string{HeaderOp, HeaderHop, HeaderResource, HeaderScope, HeaderCoordinate, HeaderReplicaWait} {
		hdr.Del(h)
	}
	// Once begun, the execution finishes even if the sender goes away.
	r := f.applyLocal(context.WithoutCancel(req.r.Context()), req.svc.Name, wo, hdr)
	if r.err != nil {
		w.Header().Set(HeaderOutcome, catalog.OutcomePending)
		errcode.Write(w, http.StatusServiceUnavailable, "not_yet", r.err.Error())
		return
	}
	w.Header().Set(HeaderOutcome, r.outcomeText)
	if r.localID != "" {
		w.Header().Set(HeaderLocalID, r.localID)
	}
	f.reply(w, r, "", nil)
}

// republish records the operations an earlier run of this site began and
// did not record (it stopped in between): every site then executes them
// from the catalog, so none is left holding a write the others never hear
// of.
func (f *Forwarder) republish(ctx context.Context) error {
	intents, err := f.exec.Intents(ctx)
	if err != nil {
		return err
	}
	self := f.cfg.Membership.Site()
	for _, in := range intents {
		op := in.Op
		if res, err := f.cfg.Catalog.Get(ctx, op.Resource); err == nil && slices.ContainsFunc(res.Operations, func(o catalog.Operation) bool { return o.ID == op.ID }) {
			_ = f.exec.Published(ctx, op.ID)
			continue
		}
		op.Outcomes = map[string]string{}
		for _, s := range op.Targets {
			op.Outcomes[s] = catalog.OutcomePending
		}
		done, ran, err := f.exec.Applied(ctx, op.Resource, op.ID)
		if err != nil {
			return err
		}
		if ran {
			op.Outcomes[self] = done.Outcome
			if done.Failed != "" {
				op.Outcomes[self] = strconv.Itoa(done.Status)
			}
		}
		var locals map[string]string
		if ran && done.LocalID != "" {
			locals = withLocal(locals, self, done.LocalID)
		}
		if err := f.record(ctx, op, in.Meta, locals); err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return fmt.Errorf("forward: record operation %s left by the last run: %w", op.ID, err)
		}
		f.log.Warn("recorded an operation the last run began", "resource", op.Resource, "op", op.ID)
		_ = f.exec.Published(ctx, op.ID)
	}
	return nil
}

// record writes an operation into the catalog: with its resource's meta
// (and the local ids the sites gave it) for a create, else appended to
// the resource.
func (f *Forwarder) record(ctx context.Context, op catalog.Operation, meta *catalog.Meta, locals map[string]string) error {
	if meta == nil {
		return f.cfg.Catalog.AppendOp(ctx, op)
	}
	m := *meta
	m.LocalIDs = maps.Clone(locals)
	return f.cfg.Catalog.Create(ctx, m, op)
}

func withLocal(m map[string]string, site, local string) map[string]string {
	if m == nil {
		m = map[string]string{}
	}
	m[site] = local
	return m
}

// acceptedPending answers a write that is recorded but that no replica
// could run yet: every replica owes it and runs it when it can.
func acceptedPending(w http.ResponseWriter, id string, outcomes map[string]string) {
	w.Header().Set(HeaderResource, id)
	w.Header().Set(HeaderSites, sitesHeader(outcomes))
	errcode.WriteJSON(w, http.StatusAccepted, map[string]string{"id": id, "status": catalog.OutcomePending})
}
