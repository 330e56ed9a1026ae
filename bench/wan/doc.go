// Package wan emulates the wide-area network between sites on one machine,
// in user space, because the kernel here has no netem.
//
// Every site gets a loopback address of its own (127.0.0.N), listens on it
// and dials from it (libp2p's TCP transport reuses its listen address for
// outgoing connections). In front of each site's listener stands a relay
// on a second address (127.0.1.N) that the site announces instead of its
// own. A connection to the relay is attributed to the site whose address
// it comes from, and the relay forwards its bytes after the one-way delay
// set between the two sites, in both directions. A cut between two sites
// stalls their links, as dropped packets would: nothing crosses, new
// connections hang; on heal, links that stalled are closed (their TCP
// connections would have timed out) and new ones flow. A one-way cut
// drops the bytes of one direction only: open links go on carrying the
// other (a site keeps hearing a peer it cannot answer), new connections
// hang.
//
// Only connections through the relays are shaped; a client on 127.0.0.1
// (a benchmark driver, a user's curl) reaches sites without delay.
package wan
