// Package catalog is the memory of cheops: which resources exist, the sites
// that hold each one, its local id on every site and the operations each site
// has applied or still owes.
//
// # Model
//
// A resource has a global id (NewID: sortable, made without coordination),
// a service, a scope (canonical text), a replica set of sites and, per site,
// a local id (the id its application gave it), a status and the operations
// it applied, failed or still owes. Every operation (create, update, delete)
// has its own id, its origin site, a hybrid-logical-clock timestamp (Clock),
// method, path, body, target sites and per-site outcome. Operations are
// ordered by (timestamp, origin site, operation id) on every site alike.
//
// # Storage
//
// Each resource's keys live in the replication group of exactly its replica
// sites (package crdt), so a site outside the scope never holds them:
//
//	/r/<id>/meta@<site>    identity and replica set (Meta) as <site> wrote
//	                       it: the creator at creation, a site that re-homed
//	                       the resource after (Rehome)
//	/r/<id>/op/<op id>     one operation, immutable, written by its origin
//	/r/<id>/site/<site>    that site's own record (SiteRecord): local id,
//	                       status, operations applied or failed
//
// Invariant: every key has one writer. go-ds-crdt keeps, for a key written
// concurrently, the value with the highest DAG height, not the newest (in a
// partition the side with fewer writes can win), so the catalog never lets
// two sites race on a key: a site writes only its own meta and its own
// record (SetSite refuses another site's), and operations are keyed by
// their unique id (a copy of an operation is the same bytes, so copies by
// several sites never conflict). Where several keys speak of one thing, the
// catalog resolves them at read time: the meta with the highest (Version,
// writing site) wins, a site's newest record (by timestamp) wins over its
// older ones and over the local ids known at creation. The resolution does
// not depend on the order keys arrive in, so every site holding the same
// keys shows the same resource, before and after a restart.
//
// A site holds a resource when it is in the replica set of the winning
// meta; otherwise Get answers ErrNotFound and List leaves it out, even if
// keys of it remain in a group the site is in (a site detached from the
// resource).
//
// # Moving a resource
//
// Attach and detach change the replica set: Rehome writes a meta with a
// higher version, the operations and the site's own record into the group
// of the new set, and the same meta into the old group, so that a site
// leaving the set learns it does not hold the resource any more and the
// sites staying never see it vanish. Nothing is deleted (go-ds-crdt keeps
// every value in its DAG anyway). Each remaining site copies its own record
// into the new group when it sees the move, and any site copies there an
// operation it holds only in the old group (recorded while the move
// happened), after Config.GatherDelay.
//
// # Reading
//
// The catalog keeps a materialized view of every key this site holds,
// rebuilt from the store at start (Scan) and updated by the store's change
// feed (Watch) and by its own writes, so a write is visible to the next read
// at once and LookupLocal is a map lookup. Watch fans changes out to any
// number of watchers without ever blocking the store; a watcher that falls
// Config.WatchBuffer changes behind gets one KindResync and re-reads.
//
// # HTTP
//
// Handler serves GET /v1/resources[?service=&site=], GET /v1/resources/{id}
// (404 with a JSON error when this site does not hold it) and GET /v1/watch
// (server-sent events, one per change).
package catalog
