// Package agent assembles a site agent: the libp2p node, the catalog, the
// forwarding layer and the HTTP API an operator and users talk to.
//
// Start brings the parts up in dependency order and Close takes them down
// in reverse: the HTTP API first (no new requests), then the components
// built on the node, then the node (pubsub, host), then storage.
//
// The API serves GET /v1/health, GET /v1/sites and GET /metrics; other
// packages mount theirs with Config.Handlers or Agent.Handle. Errors are
// JSON: {"error": "...", "code": "..."} (errcode.Write).
package agent
