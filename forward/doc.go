// Package forward executes requests where their scope and the catalog place
// them: on the local application instance, or through the agents of other
// sites over libp2p streams.
package forward
