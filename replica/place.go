package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"

	"cheops/catalog"
)

// Placement changes.
//
// Design note — attach and detach are operations of the resource at the
// site they attach or detach. They run under the resource's lock at that
// site, like its writes, so two of them never interleave there, and each
// is stamped by that site's clock while the lock is held: the stamps of
// one resource's placement changes at one site increase in the order they
// ran there. The catalog keeps the replica set written with the highest
// stamp (catalog.Placement.Version), so on every site the set ends as the
// last change that ran at the attached site left its application:
//
//   - an attach adopts the copy an earlier attach made here, unless the
//     site was detached since (Attach's base, the version of the placement
//     that detached it last): concurrent attaches leave one copy, whatever
//     their number;
//   - that holds across a crash: an attach's execution is journaled with
//     its base (synced) before the application is called, so an attach
//     that finds one begun and never finished (the site stopped after the
//     copy was made and before its outcome or stamp was journaled, or the
//     application's answer was lost) looks for the copy it may have made
//     and adopts it (adoptCut), and one that finds the outcome but no
//     stamp adopts the copy it names (attachedSince);
//   - a copy older than the last detach was left by a detach that did not
//     delete it (a detach without --delete need not reach this site): it
//     is forgotten, left in the application as that detach said, and a
//     new copy is made;
//   - a detach that deletes the copy runs here (Detach): an attach that
//     runs after it makes a new copy, one that ran before it is undone.

// Attach runs, at the site being attached, the creating operation of its
// copy of a resource (j.Create; j.Op's body is the resource's current
// state). base is the version of the placement that last detached this
// site from the resource (catalog.Resource.Detached; zero if none). Like
// Apply it runs an operation at most once; unlike Apply, a site holding a
// copy made by an attach decided after base (a concurrent one) adopts it
// instead of creating another, and so does a site where such an attach
// was cut short (a crash, a lost answer) after its copy may have been
// made: the copy is looked for (adoptCut). name, for a client-named
// service, is the name the copy takes: an application answering 409
// Conflict holds an item of that name already, which is adopted. Once the
// copy is there, stamp is called under the resource's lock and its value
// returned (and journaled with the copy): it orders this attach among the
// resource's other placement changes. A failure (Result.Err, Result.Failed) is returned
// without a stamp.
func (x *Executor) Attach(ctx context.Context, j Job, base catalog.Timestamp, name string, stamp func() catalog.Timestamp) (Result, catalog.Timestamp) {
	res := j.Op.Resource
	rs := x.state(res)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if err := x.load(ctx, res, rs); err != nil {
		return Result{Err: err}, catalog.Timestamp{}
	}
	var r Result
	if prev, seen := rs.entries[j.Op.ID]; seen && prev.State == stateDone {
		x.ops.WithLabelValues("duplicate").Inc()
		r = prev.result()
		r.Duplicate = true
	} else {
		j.attachBase = &base
		if rs.local != "" {
			keep, err := x.attachedSince(ctx, res, rs, base)
			if err != nil {
				return Result{Err: err}, catalog.Timestamp{}
			}
			if !keep {
				x.log.Info("attach: not adopting a copy older than the last detach", "resource", res, "local", rs.local, "detached", base)
				if err := x.forget(ctx, res); err != nil {
					return Result{Err: err}, catalog.Timestamp{}
				}
				rs.entries = map[string]*entry{}
				rs.setLocal("")
				seen = false
			}
		}
		if rs.local == "" {
			if err := x.adoptCut(ctx, j, rs, base); err != nil {
				return Result{Err: err}, catalog.Timestamp{}
			}
		}
		if rs.local != "" {
			seen = false // a copy is here (this attach's own, if it began before): create adopts it
		}
		x.running.Inc()
		r = x.create(ctx, j, rs, seen)
		x.running.Dec()
		if r.Failed != "" && r.Status == http.StatusConflict && name != "" {
			r = x.finish(ctx, j, rs, &entry{Op: j.Op, Status: http.StatusOK, Outcome: strconv.Itoa(http.StatusOK), LocalID: name})
		}
	}
	if !r.OK() || r.LocalID == "" {
		if r.Err == nil && r.Failed == "" {
			r.Err = fmt.Errorf("%w: the application's answer to the copy of %s names no id", errApp, res)
		}
		return r, catalog.Timestamp{}
	}
	crashPoint(FailAttachBeforeStamp)
	at := stamp()
	if err := x.journal.put(ctx, attachedKey(res), at, true); err != nil {
		return Result{Err: err}, catalog.Timestamp{}
	}
	return r, at
}

// attachedSince reports whether this site's copy of a resource (rs.local)
// was made or adopted by an attach decided since the last detach (base):
// the last attach stamp journaled here is newer than base, or — the site
// stopped after the copy's outcome was journaled and before the stamp was
// — the execution that made or adopted the copy belongs to an attach sent
// with a base no older than base.
func (x *Executor) attachedSince(ctx context.Context, res string, rs *resourceState, base catalog.Timestamp) (bool, error) {
	at, err := x.attachedAt(ctx, res)
	if err != nil {
		return false, err
	}
	if at.Compare(base) > 0 {
		return true, nil
	}
	for _, e := range rs.entries {
		if e.State == stateDone && e.LocalID == rs.local && e.AttachBase != nil && e.AttachBase.Compare(base) >= 0 {
			return true, nil
		}
	}
	return false, nil
}

// adoptCut adopts, when this site has no copy of a resource, the copy an
// attach cut short may have made: one whose execution began here (the
// entry, with the attach's base, is synced before the application is
// called) and has no outcome, because the site stopped before journaling
// it or the application's answer was lost. The application is asked for
// an item holding every field that attach sent and that no resource owns
// (as for a maybe-executed create); found, it becomes that attach's
// outcome and this site's copy, which the attach running now then adopts.
// An attach sent before the last detach (its base older than base) is
// not looked for: a copy it made is older than that detach, left as a
// detach without delete leaves one. j is the attach running now (its own
// execution is among those looked for, if it began before).
func (x *Executor) adoptCut(ctx context.Context, j Job, rs *resourceState, base catalog.Timestamp) error {
	var cut []*entry
	for _, e := range rs.entries {
		if e.State == stateBegun && e.AttachBase != nil && e.AttachBase.Compare(base) >= 0 {
			cut = append(cut, e)
		}
	}
	// The latest first: its body is the nearest to the copy's state now.
	slices.SortFunc(cut, func(a, b *entry) int { return catalog.CompareOps(b.Op, a.Op) })
	for _, e := range cut {
		cj := Job{Op: e.Op, Service: j.Service, Create: true, Collection: j.Collection, attachBase: e.AttachBase}
		id, found, err := x.find(ctx, cj)
		if err != nil {
			return err
		}
		if !found {
			continue
		}
		x.ops.WithLabelValues("adopted").Inc()
		x.log.Info("attach: adopting the copy an attach cut short made", "resource", j.Op.Resource, "local", id, "op", e.Op.ID)
		r := x.finish(ctx, cj, rs, &entry{Op: e.Op, Status: http.StatusCreated, Outcome: strconv.Itoa(http.StatusCreated), LocalID: id})
		return r.Err
	}
	return nil
}

// attachedAt reads the stamp of the last attach that made or adopted this
// site's copy of a resource (zero: none, the copy was made by its create).
func (x *Executor) attachedAt(ctx context.Context, res string) (catalog.Timestamp, error) {
	var at catalog.Timestamp
	data, err := x.cfg.Journal.Get(ctx, attachedKey(res))
	switch {
	case errors.Is(err, ds.ErrNotFound):
		return at, nil
	case err != nil:
		return at, fmt.Errorf("replica: journal of %s: %w", res, err)
	}
	if err := json.Unmarshal(data, &at); err != nil {
		return at, fmt.Errorf("replica: journal of %s: %w", res, err)
	}
	return at, nil
}

func attachedKey(res string) ds.Key { return resourceKey(res).ChildString("attached") }

// Detachment is a resource leaving this site.
type Detachment struct {
	Resource string
	Service  string
	// Purge deletes this site's copy in its application first.
	Purge bool
	// Path names the copy as operations do (by the global id, translated
	// here); LocalID is the copy's local id as the catalog knows it, used
	// when the journal has none.
	Path    string
	LocalID string
}

// Detach makes this site forget a resource, under the resource's lock:
// with Purge its copy is deleted first (404 counts as deleted; any other
// refusal or a transient failure is returned and nothing is forgotten);
// then the journal's local id and executions of the resource are dropped
// (synced), so that an attach that runs here later makes a new copy. It
// returns stamp's value, read under the lock (see Attach).
func (x *Executor) Detach(ctx context.Context, d Detachment, stamp func() catalog.Timestamp) (catalog.Timestamp, error) {
	rs := x.state(d.Resource)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if err := x.load(ctx, d.Resource, rs); err != nil {
		return catalog.Timestamp{}, err
	}
	local := rs.local
	if local == "" {
		local = d.LocalID
	}
	if d.Purge && local != "" {
		ans, err := x.cfg.App.Call(ctx, d.Service, http.MethodDelete, localPath(d.Path, d.Resource, local), nil, nil)
		switch {
		case err != nil:
			return catalog.Timestamp{}, fmt.Errorf("%w: delete the copy of %s: %v", errApp, d.Resource, err)
		case !ok2xx(ans.Status) && ans.Status != http.StatusNotFound:
			return catalog.Timestamp{}, fmt.Errorf("%w: delete the copy of %s: answered %d: %s", errApp, d.Resource, ans.Status, snippet(ans.Body))
		}
	}
	if err := x.forget(ctx, d.Resource); err != nil {
		return catalog.Timestamp{}, err
	}
	rs.entries = map[string]*entry{}
	rs.setLocal("")
	return stamp(), nil
}

// forget drops what the journal holds of a resource, synced.
func (x *Executor) forget(ctx context.Context, res string) error {
	// Outcomes held for a batch would bring keys back once deleted.
	if err := x.journal.flushLater(ctx); err != nil {
		return fmt.Errorf("replica: forget %s: %w", res, err)
	}
	prefix := resourceKey(res)
	results, err := x.cfg.Journal.Query(ctx, query.Query{Prefix: prefix.String(), KeysOnly: true})
	if err != nil {
		return fmt.Errorf("replica: forget %s: %w", res, err)
	}
	entries, err := results.Rest()
	if err != nil {
		return fmt.Errorf("replica: forget %s: %w", res, err)
	}
	for _, e := range entries {
		if err := x.cfg.Journal.Delete(ctx, ds.NewKey(e.Key)); err != nil {
			return fmt.Errorf("replica: forget %s: %w", res, err)
		}
	}
	if err := x.cfg.Journal.Sync(ctx, prefix); err != nil {
		return fmt.Errorf("replica: forget %s: %w", res, err)
	}
	return nil
}
