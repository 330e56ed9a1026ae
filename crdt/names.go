package crdt

import (
	"fmt"
	"slices"
	"strings"
)

// groupName is the canonical name of a site set: sorted, deduplicated,
// comma-separated.
func groupName(sites []string) (string, []string, error) {
	if len(sites) == 0 {
		return "", nil, fmt.Errorf("%w: a group needs at least one site", ErrBadGroup)
	}
	s := slices.Clone(sites)
	slices.Sort(s)
	s = slices.Compact(s)
	for _, name := range s {
		if name == "" || strings.ContainsAny(name, ",/ ") {
			return "", nil, fmt.Errorf("%w: bad site name %q", ErrBadGroup, name)
		}
	}
	return strings.Join(s, ","), s, nil
}
