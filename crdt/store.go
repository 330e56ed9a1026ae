package crdt

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	pebbleds "github.com/ipfs/go-ds-pebble"
)

// OpenStore opens (creating if needed) the site's persistent datastore in
// dir: a pebble database, whose write-ahead log keeps every acknowledged
// write across a process crash (writes are not fsynced one by one; a power
// loss may lose the last moments, as with any NoSync log).
//
// Every level's tables carry a Bloom filter (10 bits per key, about 1 %
// false positives): most point reads on a site look for a key that is not
// there (go-ds-crdt's priority and block of a new key, the replica
// journal of a resource being created), and a filter answers those
// without searching each table's index. Pebble's default is no filter.
func OpenStore(dir string) (*pebbleds.Datastore, error) {
	opts := &pebble.Options{}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	store, err := pebbleds.NewDatastore(dir, pebbleds.WithPebbleOpts(opts))
	if err != nil {
		return nil, fmt.Errorf("crdt: open datastore %s: %w", dir, err)
	}
	return store, nil
}
