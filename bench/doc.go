// Package bench measures how cheops behaves when the network breaks and
// what its selective replication costs, side by side with the
// alternatives. Each scenario returns a result with its figures and the
// target they are held to; `cheops bench SCENARIO` prints it as a table or
// JSON.
//
// Scenarios so far:
//
//   - selectivity: N sites, resources with random scopes of 2 sites; the
//     bytes and catalog entries each site receives when every resource's
//     entry is replicated only among its scope's sites, against the same
//     workload with one catalog replicated to every site (go-ds-crdt with a
//     single group), in the same run; and the bytes of any group's data
//     found at a site outside that group (leaked_bytes, must be 0). Sites
//     are in-process libp2p nodes with real pebble datastores on loopback.
package bench
