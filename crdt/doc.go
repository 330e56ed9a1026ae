// Package crdt replicates key-value data among a fixed set of sites with
// go-ds-crdt, one replication group per distinct set of sites. A group's
// data, messages and DAG blocks never leave its members.
//
// # Groups
//
// A group is named by its sorted site names ("berlin,paris"); it records
// its members' peer ids when it is joined. Each group has its own
// go-ds-crdt replica and its own blockstore namespace inside the site's
// one persistent datastore.
//
// # Links: announcements per peer, not per group
//
// A write's heads (and, the first time, the delta's block) are announced
// on the writer's link to each connected member (LinkProtocol): one
// long-lived stream per pair of sites carries every group they share, in
// order, flushed when the queue empties, so a burst travels in few
// packets and a site's announcing cost follows the peers it talks to, not
// the number of groups. Joining a group is a local act: no topic, no mesh;
// the first message of a group a member has not joined yet names the
// group's peers, and the member joins after checking them against
// membership (joinClaimed). A link idle for 10 s is
// closed.
//
// # Keeping data inside the group
//
//   - Announcements: sent only to the group's members; a link message is
//     accepted only from a member of the group it names (a non-member's is
//     refused and counted).
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
// share straight to it over a stream, at the configured delays, and runs
// an anti-entropy round with it. Of each pair of members the lower peer
// id repeats rounds every DigestInterval (one stream per peer, whatever
// the number of groups); the answering side also pushes the heads of the
// groups they share that the request did not name (groups the asker never
// heard of). A member this site is not connected to gets a round, which
// dials it, when a group they share was used or changed since their last
// round (failed dials back off). With Config.SettleAfter set (it is 0,
// off, by default), a periodic round leaves out the groups this site
// wrote into, or read a member's announcement of, within SettleAfter on
// a connection open since (their announcements may still be on the
// link: comparing them found only writes in flight), and compares them
// once settled, or after settleLimit settle periods whatever their
// writes. A repair's changes and reads do not restart the settle time;
// a group the last round found different, or one of which a message was
// dropped at either end, is compared at the next round whatever its
// writes (a round with every group deferred still sends a summary of
// none, for the other side to name such a group); a round after a
// connection event compares every group. So a lost announcement is
// repaired within about one or two intervals. The receiver fetches what
// it lacks; the block server sends, with each wanted block, its
// ancestors down to what the asker already holds, so a long chain comes
// in a few round trips instead of one per block.
//
// # Crash safety
//
// A clean-shutdown marker is written by Close and removed at start; after
// an unclean stop every group runs go-ds-crdt's Repair before serving
// (upstream issue #279 can leave a branch half-processed).
package crdt
