//go:build !unix

package node

// LockFile is the file a running node holds locked in its data directory
// (on Unix; elsewhere the directory is not locked).
const LockFile = "lock"

func lockDataDir(string) (func(), error) { return func() {}, nil }
