// Package node is a site's libp2p presence: its host and persistent
// identity, who may connect (trust allowlist, private network key), the
// membership of sites (site name ↔ peer id, signed records over pubsub) and
// heartbeats that tell whether each site is up, suspect or down and how far
// away it is.
package node
