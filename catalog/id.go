package catalog

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"sync"
	"time"
)

// crockford is Crockford's base32 alphabet: no I, L, O or U.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewID returns a global resource id: 48 bits of milliseconds then 80
// random bits, in 26 characters of Crockford base32 (the ULID layout), so
// ids sort by creation time and need no coordination between sites: two
// ids drawn by different sites in one millisecond collide with probability
// 2^-80, so no site-derived bits are needed (and none would tell a reader
// of an id where it was made).
//
// Within one process ids are strictly increasing (ULID's monotonic mode):
// an id drawn in the same millisecond as the previous one, or with a clock
// that went back, is the previous one plus one, so a site lists its
// resources in the order it created them.
//
// Written here rather than taken from github.com/oklog/ulid: 40 lines
// against a dependency.
func NewID(now time.Time) string { return ids.next(now) }

// idSource draws ids in monotonic mode; one per process (ids), one per
// simulated site in tests.
type idSource struct {
	mu sync.Mutex
	ms uint64 // millisecond of the last id
	hi uint16 // its 80 random bits
	lo uint64
}

var ids idSource

func (ids *idSource) next(now time.Time) string {
	ids.mu.Lock()
	ms := uint64(now.UnixMilli()) & (1<<48 - 1)
	if ms > ids.ms || ids.ms == 0 {
		ids.ms = ms
		var r [10]byte
		_, _ = rand.Read(r[:]) // never fails (Go 1.24+: it would crash the program instead)
		ids.hi, ids.lo = binary.BigEndian.Uint16(r[:2]), binary.BigEndian.Uint64(r[2:])
	} else {
		ids.lo++
		if ids.lo == 0 {
			ids.hi++
			if ids.hi == 0 { // 2^80 ids in a millisecond: borrow the next one
				ids.ms++
			}
		}
	}
	hi := ids.ms<<16 | uint64(ids.hi)
	lo := ids.lo
	ids.mu.Unlock()
	// 128 bits as 26 base32 digits; the first digit carries 3 bits.
	var digits [26]byte
	for i := 25; i >= 0; i-- {
		digits[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(digits[:])
}

// ValidID reports whether s has the form of a global id.
func ValidID(s string) bool {
	if len(s) != 26 || s[0] > '7' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(crockford, s[i]) < 0 {
			return false
		}
	}
	return true
}
