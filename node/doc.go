// Package node is a site's libp2p presence: its host and persistent
// identity, who may connect (trust allowlist, private network key), the
// membership of sites (site name ↔ peer id, signed records over pubsub,
// also sent straight to each site that connects) and heartbeats that tell
// whether each site is up, suspect or down and how far away it is.
//
// Heartbeats scale with a constant number of probes per site: each round
// probes the sites in trouble and ProbeFanout healthy ones in turn
// (schedule.go); RTTs between two other sites come from Vivaldi network
// coordinates carried by probe answers and records (coord.go).
package node
