package scope

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// State is what membership believes of a site.
type State int

// Site states. Unknown is the zero value: a site named in a scope that no
// heartbeat has reached yet.
const (
	Unknown State = iota
	Up
	Suspect
	Down
)

func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Suspect:
		return "suspect"
	case Down:
		return "down"
	default:
		return "unknown"
	}
}

// ParseState reads a state as String prints it.
func ParseState(s string) (State, bool) {
	for _, st := range []State{Unknown, Up, Suspect, Down} {
		if st.String() == s {
			return st, true
		}
	}
	return Unknown, false
}

// Reachable reports whether requests may be sent to a site in this state.
// A suspect site has missed a probe or two: it is still tried.
func (s State) Reachable() bool { return s == Up || s == Suspect }

// SiteInfo is one site as membership sees it.
type SiteInfo struct {
	Name  string
	State State
	// RTT holds the round-trip times this site measured to other sites.
	RTT map[string]time.Duration
}

// View is a membership snapshot: the planner's only input besides the scope.
type View struct {
	// Local is the site the request arrived at.
	Local string
	// Sites holds every known site, the local one included.
	Sites map[string]SiteInfo
}

// RTT returns the round-trip time between two sites: 0 for a site to
// itself, else either direction's measurement. ok is false when neither
// site measured the other.
func (v View) RTT(from, to string) (time.Duration, bool) {
	if from == to {
		return 0, true
	}
	if d, ok := v.Sites[from].RTT[to]; ok {
		return d, true
	}
	if d, ok := v.Sites[to].RTT[from]; ok {
		return d, true
	}
	return 0, false
}

// Unmeasured is the distance of a site whose RTT neither side measured:
// farther than any measured one.
const Unmeasured = time.Duration(math.MaxInt64)

// Distance is how far site is from the local site when choosing between
// sites: the RTT (0 for the local site itself), Unmeasured when neither
// side measured it. It is the one measure of "nearest": the choice of
// '|' in Plan, the coordinator of a write (Plan.Nearest), the holder a
// read of a resource tries first (Nearest).
func (v View) Distance(site string) time.Duration {
	if d, ok := v.RTT(v.Local, site); ok {
		return d
	}
	return Unmeasured
}

// Nearest returns sites nearest to the local site first (Distance);
// equally near sites keep their order. sites is not changed. Pure.
func (v View) Nearest(sites []string) []string {
	out := slices.Clone(sites)
	slices.SortStableFunc(out, func(a, b string) int { return cmp.Compare(v.Distance(a), v.Distance(b)) })
	return out
}

func (v View) known(site string) bool {
	_, ok := v.Sites[site]
	return ok
}

// reachable reports whether membership says a site can be sent requests
// now. The local site is no exception: membership (node) reports itself up,
// and a view that says otherwise is taken at its word.
func (v View) reachable(site string) bool {
	return v.Sites[site].State.Reachable()
}
