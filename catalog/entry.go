package catalog

import (
	"bytes"
	"cmp"
	"maps"
	"slices"
	"strings"
)

// groupOf names the group of a site set: its sites sorted, joined by ",".
func groupOf(sites []string) string {
	s := slices.Clone(sites)
	slices.Sort(s)
	return strings.Join(slices.Compact(s), ",")
}

// A slot is one key of a resource in one group. The same key can exist in
// several groups (a resource re-homed to another replica set), so the view
// keeps every slot the store holds and resolves them at read time.
type (
	metaSlot struct{ group, writer string }
	opSlot   struct{ group, op string }
	recSlot  struct{ group, site string }
)

// stored is a decoded value with the bytes it was decoded from.
type stored[T any] struct {
	raw []byte
	v   T
}

// entry is everything this site holds about one resource: every slot of
// every group, as the store has them. What the resource is (its meta, its
// operations, each site's record) is derived from the slots by rules that
// do not depend on the order the slots arrived in, so every site holding
// the same keys resolves the same view, before and after a restart.
type entry struct {
	id      string
	metas   map[metaSlot]stored[Meta]
	ops     map[opSlot]stored[Operation]
	records map[recSlot]stored[SiteRecord]

	// Derived by refresh.
	best    *Meta  // the winning meta, nil while none arrived
	group   string // group of best.Sites: where this resource is written
	visible bool   // this site is in best.Sites
	index   []localKey
}

func newEntry(id string) *entry {
	return &entry{id: id, metas: map[metaSlot]stored[Meta]{}, ops: map[opSlot]stored[Operation]{}, records: map[recSlot]stored[SiteRecord]{}}
}

func (e *entry) empty() bool { return len(e.metas)+len(e.ops)+len(e.records) == 0 }

// bestMeta is the meta with the highest (Version, writer, group).
func (e *entry) bestMeta() (*Meta, metaSlot) {
	var best *Meta
	var at metaSlot
	for s, m := range e.metas {
		if best == nil || compareMeta(m.v, s, *best, at) > 0 {
			v := m.v
			best, at = &v, s
		}
	}
	return best, at
}

func compareMeta(a Meta, as metaSlot, b Meta, bs metaSlot) int {
	if c := Order(a.Version, as.writer, b.Version, bs.writer); c != 0 {
		return c
	}
	return cmp.Compare(as.group, bs.group)
}

// refresh recomputes the derived fields for this site.
func (e *entry) refresh(self string) {
	e.best, _ = e.bestMeta()
	e.group, e.visible, e.index = "", false, nil
	if e.best == nil {
		return
	}
	e.group = groupOf(e.best.Sites)
	e.visible = slices.Contains(e.best.Sites, self)
	if !e.visible {
		return
	}
	for _, site := range e.best.Sites {
		if local := e.localID(site); local != "" {
			e.index = append(e.index, localKey{e.best.Service, site, local})
		}
	}
}

// record is a site's newest record over every group (ties: the current
// group's, then by group name).
func (e *entry) record(site string) (stored[SiteRecord], recSlot, bool) {
	var best stored[SiteRecord]
	var at recSlot
	found := false
	for s, r := range e.records {
		if s.site != site {
			continue
		}
		if !found || r.v.At.Compare(best.v.At) > 0 || (r.v.At == best.v.At && e.preferGroup(s.group, at.group)) {
			best, at, found = r, s, true
		}
	}
	return best, at, found
}

// preferGroup orders copies of one key in two groups: the current
// group's first, then the smaller group name.
func (e *entry) preferGroup(a, b string) bool {
	if a == e.group || b == e.group {
		return a == e.group && b != e.group
	}
	return a < b
}

func (e *entry) localID(site string) string {
	if r, _, ok := e.record(site); ok && r.v.LocalID != "" {
		return r.v.LocalID
	}
	if e.best != nil {
		return e.best.LocalIDs[site]
	}
	return ""
}

// operations returns each operation once (one copy per op id, the current
// group's first: copies are identical unless a member is faulty), in the
// deterministic order.
func (e *entry) operations() []stored[Operation] {
	byID := map[string]opSlot{}
	for s := range e.ops {
		if have, ok := byID[s.op]; !ok || e.preferGroup(s.group, have.group) {
			byID[s.op] = s
		}
	}
	out := make([]stored[Operation], 0, len(byID))
	for _, s := range byID {
		out = append(out, e.ops[s])
	}
	slices.SortFunc(out, func(a, b stored[Operation]) int { return CompareOps(a.v, b.v) })
	return out
}

// stragglers lists the slots that belong in the current group and are not
// there: operations only held in another group, and self's own record
// when its newest copy is elsewhere. Only for a visible entry.
func (e *entry) stragglers(self string) (keys []string, values [][]byte) {
	if !e.visible {
		return nil, nil
	}
	for _, op := range e.operations() {
		if _, ok := e.ops[opSlot{e.group, op.v.ID}]; !ok {
			keys, values = append(keys, opKey(e.id, op.v.ID)), append(values, op.raw)
		}
	}
	if r, at, ok := e.record(self); ok && at.group != e.group {
		if cur, ok := e.records[recSlot{e.group, self}]; !ok || !bytes.Equal(cur.raw, r.raw) {
			keys, values = append(keys, siteKey(e.id, self)), append(values, r.raw)
		}
	}
	return keys, values
}

// resolve builds the resource's view; false when this site does not hold
// the resource (no meta yet, or a replica set without this site).
func (e *entry) resolve() (Resource, bool) {
	if !e.visible {
		return Resource{}, false
	}
	m := e.best
	r := Resource{ID: m.ID, Service: m.Service, Scope: m.Scope, CreatedScope: m.CreatedScope, Detached: maps.Clone(m.Detached), Sites: slices.Clone(m.Sites), Collection: m.Collection,
		Origin: m.Origin, Created: m.Created, CreateOp: m.CreateOp, PerSite: make(map[string]SiteView, len(m.Sites))}
	ops := e.operations()
	r.Operations = make([]Operation, len(ops))
	for i, op := range ops {
		r.Operations[i] = op.v
	}
	for _, site := range m.Sites {
		r.PerSite[site] = siteView(site, m.LocalIDs[site], e, r.Operations)
	}
	// Each operation shows its current outcome per site: what the site
	// recorded since (an owed operation executed late, superseded, or
	// refused) replaces the origin's "pending".
	for i, op := range r.Operations {
		var outcomes map[string]string
		for site, o := range op.Outcomes {
			if o != OutcomePending {
				continue
			}
			rec, _, ok := e.record(site)
			if !ok {
				continue
			}
			now, done := rec.v.Applied[op.ID]
			if why, failed := rec.v.Failed[op.ID]; failed {
				now, done = "failed: "+why, true
			}
			if !done {
				continue
			}
			if outcomes == nil {
				outcomes = make(map[string]string, len(op.Outcomes))
				for k, v := range op.Outcomes {
					outcomes[k] = v
				}
			}
			outcomes[site] = now
		}
		if outcomes != nil {
			r.Operations[i].Outcomes = outcomes
		}
	}
	return r, true
}

// siteView resolves one site: its local id and status (from its own
// record, else from the meta and the outcomes of the operations), and the
// operations it still owes, failed or skipped.
func siteView(site, metaLocal string, e *entry, ops []Operation) SiteView {
	v := SiteView{LocalID: metaLocal, Status: StatusOK}
	if v.LocalID == "" {
		v.Status = StatusPending
		if len(ops) > 0 && succeeded(ops[0].Outcomes[site]) {
			// Created, but the application's answer named no id.
			v.Status = StatusUnmapped
		}
	}
	stored, _, hasRec := e.record(site)
	rec := stored.v
	if hasRec {
		if rec.LocalID != "" {
			v.LocalID = rec.LocalID
		}
		if rec.Status != "" {
			v.Status = rec.Status
		}
	}
	for i, op := range ops {
		outcome := op.Outcomes[site]
		if code, ok := rec.Applied[op.ID]; ok {
			outcome = code
		}
		switch {
		case i == 0 && v.LocalID == "" && refused(outcome):
			v.Status = StatusFailed
		case op.Method == "DELETE" && succeeded(outcome):
			v.Status = StatusDeleted
		}
		if op.Outcomes[site] != OutcomePending {
			continue
		}
		if code, done := rec.Applied[op.ID]; done {
			if strings.HasPrefix(code, SupersededPrefix) {
				v.Superseded = append(v.Superseded, op.ID+": "+code)
			}
			continue
		}
		if why, failed := rec.Failed[op.ID]; failed {
			v.Failed = append(v.Failed, op.ID+": "+why)
			continue
		}
		v.Pending = append(v.Pending, op.ID)
	}
	return v
}
