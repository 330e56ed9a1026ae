// Package bench measures how cheops behaves when the network breaks and
// what its selective replication costs, side by side with the
// alternatives, in the same run. Each scenario returns a Report: one JSON
// document, a table with every figure beside its target, and plots.
// `cheops bench SCENARIO` runs one; bench/README.md explains them and
// shows the last results.
//
// Scenarios:
//
//   - convergence: agent processes (json-server behind each) over the
//     emulated WAN of package wan, cut in two halves, writes on both
//     sides, heal; time until catalogs, then applications, converge.
//   - selectivity: in-process sites; bytes and entries each site receives
//     with scoped replication against one catalog replicated everywhere;
//     bytes of a group found outside it (must be 0).
//   - forwarding: latency added by the local agent, a remote agent and a
//     plain reverse proxy (HAProxy) in front of the same json-server.
//   - availability: writes accepted on a site cut off from the others,
//     cheops against a 3-member etcd cluster over the same emulated WAN.
//   - scale: 3 to 50 in-process sites, 1k to 100k resources: memory,
//     write throughput and convergence as they grow.
//
// Cluster runs real `cheops agent` processes for the scenarios that need
// them; wan shapes the links between them (delay, cuts) in user space.
package bench
