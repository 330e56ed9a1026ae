//go:build race

package node

// raceEnabled: the race detector slows every goroutine several times;
// tests that start tens of in-process sites start fewer.
const raceEnabled = true
