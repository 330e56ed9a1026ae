package scope

import (
	"fmt"
	"strings"
)

// UnboundError is Plan's error for a scope that binds neither the called
// service nor a bare expression. It wraps ErrNoBinding and names what the
// scope does bind, and the nearest of those names when the service looks
// like a misspelling of one ({post: …} sent to posts).
type UnboundError struct {
	Service string
	// Scope is the scope's canonical text.
	Scope string
	// Bound lists the services the scope binds, in written order.
	Bound []string
	// Nearest is the bound name closest to Service, empty when none is
	// close (see Nearest).
	Nearest string
}

func (e *UnboundError) Error() string {
	msg := fmt.Sprintf("%v: %q (scope %s binds %s)", ErrNoBinding, e.Service, e.Scope, strings.Join(e.Bound, ", "))
	if e.Nearest != "" {
		msg += fmt.Sprintf("; did you mean %q?", e.Nearest)
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrNoBinding) hold.
func (e *UnboundError) Unwrap() error { return ErrNoBinding }

// Nearest returns the candidate closest to name by edit distance
// (insertions, deletions, substitutions; case ignored), when it is close
// enough to be a typo: at most 2 edits, and fewer than half of name's
// length. Ties go to the first candidate. Pure.
func Nearest(name string, candidates []string) (string, bool) {
	best, bestD := "", -1
	for _, c := range candidates {
		d := editDistance(strings.ToLower(name), strings.ToLower(c))
		if bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	if bestD < 0 || bestD > 2 || 2*bestD >= len(name) {
		return "", false
	}
	return best, true
}

// editDistance is Levenshtein's distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
