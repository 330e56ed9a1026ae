// Package faults holds the real-partition tests: each site is a network
// namespace of its own, linked to the others by a veth pair on a bridge,
// running the built `cheops agent` binary and a real json-server; links are
// cut with nftables inside the namespaces (both directions, one direction,
// flapping). The tests need root, iproute2 and nftables; they run with
// `make e2e` (CHEOPS_FAULTS=1) and skip with a message otherwise.
package faults
