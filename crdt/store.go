package crdt

import (
	"fmt"

	pebbleds "github.com/ipfs/go-ds-pebble"
)

// OpenStore opens (creating if needed) the site's persistent datastore in
// dir: a pebble database, whose write-ahead log keeps every acknowledged
// write across a process crash (writes are not fsynced one by one; a power
// loss may lose the last moments, as with any NoSync log).
func OpenStore(dir string) (*pebbleds.Datastore, error) {
	store, err := pebbleds.NewDatastore(dir)
	if err != nil {
		return nil, fmt.Errorf("crdt: open datastore %s: %w", dir, err)
	}
	return store, nil
}
