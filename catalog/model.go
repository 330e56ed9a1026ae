package catalog

// Site statuses of a resource.
const (
	StatusOK      = "ok"      // the site holds the resource
	StatusPending = "pending" // the site still owes the creation
	StatusDeleted = "deleted" // the site deleted its copy
	StatusFailed  = "failed"  // the site's application refused the creation
	// StatusUnmapped: the site's application created the resource but its
	// answer held no id, so requests by global id cannot reach that copy.
	StatusUnmapped = "unmapped"
)

// Outcome values of an operation at a site, besides an HTTP status code.
const OutcomePending = "pending"

// Consistency policies of an operation.
const (
	// PolicyReplace: the operation replaces the resource's state; among
	// concurrent ones the last by HLC wins and older ones are superseded.
	PolicyReplace = "replace"
	// PolicyCommute: every operation is applied, in any order.
	PolicyCommute = "commute"
	// PolicyOrdered: every operation is applied, in HLC order.
	PolicyOrdered = "ordered"
)

// DefaultPolicy is the policy of a method: PUT replaces, the other
// updates (PATCH, POST on an item) are applied in order.
func DefaultPolicy(method string) string {
	if method == "PUT" {
		return PolicyReplace
	}
	return PolicyOrdered
}

// EffectivePolicy is the operation's policy, or its method's default.
func (o Operation) EffectivePolicy() string {
	if o.Policy != "" {
		return o.Policy
	}
	return DefaultPolicy(o.Method)
}

// SupersededPrefix starts the outcome a site records for an owed
// operation it skipped because a later one had already replaced the state.
const SupersededPrefix = "superseded by "

// Meta is a resource's identity and replica set. The creating site writes
// the first one; a site that changes the replica set (Catalog.Rehome)
// writes its own, with a higher Version. Each site writes only its own
// meta key; the meta with the highest (Version, writing site) is the
// resource's.
type Meta struct {
	ID         string            `json:"id"`
	Service    string            `json:"service"`
	Scope      string            `json:"scope"`
	Sites      []string          `json:"sites"`
	Collection string            `json:"collection"`
	Origin     string            `json:"origin"`
	Created    Timestamp         `json:"created"`
	LocalIDs   map[string]string `json:"local_ids,omitempty"`
	// CreateOp names the operation that created the resource, written
	// with this meta: a site merging the DAG from its heads down can hold
	// the meta and later operations a moment before the creation, and
	// must not take the first operation it sees for it. Empty in metas
	// written before it existed.
	CreateOp string `json:"create_op,omitempty"`
	// Version orders the metas of one resource written as its replica set
	// changed (attach, detach): the highest wins, ties broken by the
	// writing site's name. Zero for the first.
	Version Timestamp `json:"version,omitempty"`

	// Scope is the scope of the resource's placement: the scope it was
	// created with until an attach or a detach rewrites it to the new
	// replica set ({posts: paris & berlin & rome}); CreatedScope then
	// keeps the scope it was created with (empty before).
	CreatedScope string `json:"created_scope,omitempty"`
	// Detached holds, for each site detached from the resource, the
	// version of the placement that detached it last: an attach of that
	// site later makes a new copy there rather than adopting what the
	// detach left (see replica.Executor.Attach).
	Detached map[string]Timestamp `json:"detached,omitempty"`
}

// Operation is one request executed (or owed) on a resource's sites.
type Operation struct {
	ID       string    `json:"id"`
	Resource string    `json:"resource"`
	Origin   string    `json:"origin"`
	At       Timestamp `json:"at"`
	Method   string    `json:"method"`
	// Policy says how the operation meets concurrent ones: PolicyReplace,
	// PolicyCommute or PolicyOrdered (see docs/consistency.md). Empty
	// means the default for its method (DefaultPolicy).
	Policy   string            `json:"policy,omitempty"`
	Path     string            `json:"path"`
	Body     []byte            `json:"body,omitempty"`
	Targets  []string          `json:"targets"`
	Outcomes map[string]string `json:"outcomes"` // site → HTTP status or "pending"
}

// SiteRecord is what one site says of its copy of a resource.
type SiteRecord struct {
	Site    string            `json:"site"`
	LocalID string            `json:"local_id,omitempty"`
	Status  string            `json:"status"`
	Applied map[string]string `json:"applied,omitempty"` // op id → outcome
	Failed  map[string]string `json:"failed,omitempty"`  // op id → why
	At      Timestamp         `json:"at"`
}

// SiteView is the resolved state of a resource on one site.
type SiteView struct {
	LocalID string   `json:"local_id,omitempty"`
	Status  string   `json:"status"`
	Pending []string `json:"pending,omitempty"`
	Failed  []string `json:"failed,omitempty"`
	// Superseded lists owed operations the site did not run because a
	// later state-replacing operation (or a delete) had already been
	// applied there, each with the one that superseded it.
	Superseded []string `json:"superseded,omitempty"`
}

// Resource is the resolved view of a catalog entry. Sites is the replica
// set in the order the scope named it; PerSite has one view per site of
// it. Operations are in their deterministic order (CompareOps).
type Resource struct {
	ID         string    `json:"id"`
	Service    string    `json:"service"`
	Scope      string    `json:"scope"`
	Sites      []string  `json:"-"`
	Collection string    `json:"collection"`
	Origin     string    `json:"origin"`
	Created    Timestamp `json:"created"`
	// CreateOp is the id of the operation that created the resource
	// (Meta.CreateOp): until the view holds it, Operations lacks the
	// creation (see Complete).
	CreateOp   string              `json:"create_op,omitempty"`
	PerSite    map[string]SiteView `json:"sites"`
	Operations []Operation         `json:"operations"`

	// Scope is the scope of the placement as it is (see Meta.Scope);
	// CreatedScope, once an attach or a detach rewrote it, the scope the
	// resource was created with.
	CreatedScope string `json:"created_scope,omitempty"`
	// Detached: see Meta.Detached.
	Detached map[string]Timestamp `json:"detached,omitempty"`
}

// Succeeded reports whether an outcome is a 2xx status.
func Succeeded(outcome string) bool { return len(outcome) == 3 && outcome[0] == '2' }

func succeeded(outcome string) bool { return Succeeded(outcome) }

func refused(outcome string) bool {
	return len(outcome) == 3 && (outcome[0] == '4' || outcome[0] == '5')
}

// Complete reports whether the resource's operations start with its
// creation: false while this site holds later operations but not yet the
// one that created the resource (or for a resource with none).
func (r Resource) Complete() bool {
	if len(r.Operations) == 0 {
		return false
	}
	return r.CreateOp == "" || r.Operations[0].ID == r.CreateOp
}
