// Package e2e holds end-to-end tests: several site agents on loopback,
// each in front of its own instance of a real REST application
// (json-server from npm), driven through the agents' HTTP API as users
// drive them.
package e2e
