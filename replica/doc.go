// Package replica executes, at one site, the writes of the resources the
// site replicates. It is the only way an operation reaches the site's
// application: a write a client sends through any site, the same write
// forwarded by another site, and an operation the site owes after a cut
// or a crash all go through the site's one Executor.
//
// # Order
//
// The catalog orders the operations of a resource by (HLC timestamp,
// origin site, operation id). Operations of one resource are executed one
// at a time; those of different resources run in parallel. An operation
// that arrives after later ones it precedes is not applied on top of them
// blindly (that is how two replicas used to end different): Decide, a pure
// function of what the site applied and the operation, says what to do.
//
//   - a delete is final: once one is applied, every other operation of the
//     resource is superseded by it;
//   - an operation followed by an applied replace (PUT by default) is
//     superseded by that replace: its effect is overwritten in the order;
//   - otherwise the operation is applied, then every later applied ordered
//     or replace operation is replayed after it, so the application ends
//     as if all had run in order (for merge-style updates, which are
//     idempotent);
//   - commuting operations are applied once, in any order, never replayed.
//
// Every replica applies the same rule to the same set of operations, so
// once nothing is pending every replica's application holds the state of
// the catalog's order, whatever order the operations arrived in.
//
// # Exactly once
//
// Each execution is journaled in the site's own datastore (not
// replicated): the operation is written before the application is
// called (synced for creates and commuting operations, which must not run
// twice), and its outcome after. A second delivery of an operation (the
// origin lost the answer and the catalog says it is still owed, or the
// live request and the catalog raced) returns the first outcome without
// calling the application. The outcomes of owed operations (the
// Runner's) are journaled in batches, each written before the catalog
// records them; a commuting operation's is written at once. After a
// crash between the call and the outcome (or its batch) the operation
// is "maybe executed": a create is looked for in the
// application and adopted rather than made twice; a replace, delete or
// merge update runs again (idempotent).
//
// A create is the one operation whose every execution would otherwise
// read the journal for nothing: its resource is new. At its origin (which
// minted the id for the request) and at a replica it is sent to once,
// whose catalog does not hold the resource, it runs as a Fresh job,
// reading nothing; what this process journaled is in memory, and only
// the catalog could have brought the create to an earlier run. At the
// origin its begun entry is journaled with the intent, in one synced
// write (Executor.IntendAndBegin).
//
// # Placement
//
// Attach and detach run here too (place.go): the copy an attach sends is
// created, or adopted when a concurrent attach made it (or an attach cut
// short by a crash, found as a maybe-executed create is), and a detach with
// delete removes and forgets it, under the resource's lock, each stamped
// by this site's clock while the lock is held; the catalog keeps the
// replica set with the highest stamp.
//
// # Catch-up
//
// A Runner follows the catalog for operations this site owes (recorded
// pending by their origin) and hands them to the Executor: different
// resources in parallel (bounded), one resource in order, the resource
// with the most owed operations first (one resource's operations run one
// after the other: the longest chain bounds the catch-up), a resource
// that changed while it ran run again at once, a transient failure
// retried at once and then with backoff. Nothing waits for a timer that
// work is ready for: the watcher that finds owed operations never waits
// for a worker, and a worker does not wait for its outcomes to be
// written. Outcomes are written to this site's catalog records in
// batches; until a batch is written its operations are not owed again. A resource's owed operations go to the
// Executor together (ApplyOwed): the same rule, but an applied operation
// that must run again does so once, at its place among the late ones,
// rather than once after each of them (k late operations interleaved
// with k applied ones: about 2k calls instead of k²/2).
package replica
