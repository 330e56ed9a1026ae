package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
)

// groupFrames are the functions whose goroutines are a group's own:
// go-ds-crdt's (a replica's workers, its rebroadcast and repair timers,
// a DAG walk) and the crdt package's per group (a commit, a repair run,
// a rewalk, a frontier check: methods of Group and replica and the
// closures they start; a fetch of the group's blocks, its exchange).
var groupFrames = []string{"github.com/ipfs/go-ds-crdt.", "cheops/crdt.(*Group).", "cheops/crdt.(*replica).", "cheops/crdt.exchange."}

// groupGoroutines counts the goroutines running a group's code
// (groupFrames anywhere on their stack), read from the runtime's
// goroutine profile rather than from the crdt package's bookkeeping: a
// goroutine a sleeping group leaked shows even where the package
// believes it stopped. The connections' goroutines (yamux's loops, the
// streams of links, anti-entropy and membership: a set per peer, not
// per group) are not among them. runtime.NumGoroutine counts those too,
// and at 100 idle sites it moves by hundreds between minutes as
// duplicate connections of simultaneous dials come and go (the idle
// figures print both).
func groupGoroutines() (int, error) { return goroutinesRunning(groupFrames...) }

// goroutinesRunning counts this process's goroutines that have on their
// stack a function whose name starts with one of prefixes.
func goroutinesRunning(prefixes ...string) (int, error) {
	var profile bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&profile, 1); err != nil {
		return 0, fmt.Errorf("goroutine profile: %w", err)
	}
	return countStacks(profile.Bytes(), prefixes)
}

// countStacks counts the goroutines of a goroutine profile in its
// debug=1 text form (stacks grouped: "N @ pc…", then one "#\tpc\tfunc+off\tfile:line"
// line per frame) that have a frame of a function whose name starts
// with one of prefixes.
func countStacks(profile []byte, prefixes []string) (int, error) {
	match := func(fn string) bool {
		return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(fn, p) })
	}
	total, group, counted := 0, 0, false
	sc := bufio.NewScanner(bytes.NewReader(profile))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "goroutine profile:"):
		case strings.HasPrefix(line, "#"):
			fields := strings.Fields(line)
			if counted || len(fields) < 3 {
				continue
			}
			fn, _, _ := strings.Cut(fields[2], "+")
			if match(fn) {
				total += group
				counted = true
			}
		default:
			n, rest, ok := strings.Cut(line, " @")
			if !ok {
				return 0, fmt.Errorf("goroutine profile: unexpected line %q", line)
			}
			var err error
			if group, err = strconv.Atoi(n); err != nil {
				return 0, fmt.Errorf("goroutine profile: count of %q: %w", rest, err)
			}
			counted = false
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("goroutine profile: %w", err)
	}
	return total, nil
}
