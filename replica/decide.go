package replica

import (
	"net/http"
	"slices"

	"cheops/catalog"
)

// Decision is what to do with an operation arriving at a replica, given
// what the replica already applied to the resource.
type Decision struct {
	// SupersededBy, when set, names the applied operation that makes this
	// one moot, with why: "<op id> (delete)" or "<op id> (later replace)".
	// The operation is not executed.
	SupersededBy string
	// Replay lists the applied operations to run again after this one, in
	// order, so that the application ends in the catalog's order.
	Replay []catalog.Operation
}

// Decide is the ordering rule of a replica (see the package doc). applied
// holds the operations this replica applied to the resource, in any
// order; op is the one arriving. It is a pure function: no I/O, no clock.
func Decide(applied []catalog.Operation, op catalog.Operation) Decision {
	var later []catalog.Operation
	lastReplace := -1
	for _, a := range applied {
		if a.ID == op.ID {
			continue
		}
		if a.Method == http.MethodDelete {
			return Decision{SupersededBy: a.ID + " (delete)"}
		}
		if catalog.CompareOps(a, op) > 0 {
			later = append(later, a)
		}
	}
	if op.Method == http.MethodDelete || op.EffectivePolicy() == catalog.PolicyCommute || len(later) == 0 {
		return Decision{}
	}
	slices.SortFunc(later, catalog.CompareOps)
	for i, a := range later {
		if a.EffectivePolicy() == catalog.PolicyReplace {
			lastReplace = i
		}
	}
	if lastReplace >= 0 {
		// A later replace overwrites whatever this operation would do.
		return Decision{SupersededBy: later[lastReplace].ID + " (later replace)"}
	}
	var replay []catalog.Operation
	for _, a := range later {
		if a.EffectivePolicy() != catalog.PolicyCommute {
			replay = append(replay, a)
		}
	}
	return Decision{Replay: replay}
}
