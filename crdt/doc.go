// Package crdt replicates key-value data among a fixed set of sites with
// go-ds-crdt, one replication group per distinct set of sites. A group's
// data, messages and DAG blocks never leave its members.
//
// # Groups
//
// A group is named by its sorted site names ("berlin,paris") and
// identified on the network by the sorted peer ids of those sites: its
// pubsub topic is "/cheops/crdt/1/<pid>,<pid>", so that pubsub's
// subscription and peer filters can decide who may join from the topic name
// alone (TopicAllows), without a membership lookup that could drop a
// subscription forever. Each group has its own go-ds-crdt replica and its
// own blockstore namespace inside the site's one persistent datastore.
//
// # Keeping data inside the group
//
//   - Topic: only members may subscribe (TopicAllows, enforced by the
//     node's filters); a validator drops messages whose signer or forwarder
//     is not a member.
//   - Blocks: no bitswap, no DHT. DAG blocks travel only over the block
//     protocol of this package, which serves a group's blocks only to the
//     group's members, asks only connected members, and checks every
//     block's hash against its CID.
//
// # What go-ds-crdt resolves, and what it does not
//
// go-ds-crdt keeps, for a key written concurrently, the value with the
// highest DAG height (ties: the greater bytes), not the newest one. Callers
// (the catalog) therefore give every key a single writer and resolve
// "latest" themselves with a hybrid logical clock stored in the values.
//
// # Catch-up
//
// When a member connects, this site pushes the heads of every group they
// share straight to it over a stream, twice (pubsub messages sent in the
// first moments of a connection are lost). The receiver fetches what it
// lacks; the block server sends, with each wanted block, its ancestors down
// to what the asker already holds, so a long chain comes in a few round
// trips instead of one per block.
//
// # Crash safety
//
// A clean-shutdown marker is written by Close and removed at start; after
// an unclean stop every group runs go-ds-crdt's Repair before serving
// (upstream issue #279 can leave a branch half-processed).
package crdt
