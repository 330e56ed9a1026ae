// Package testkit is what the tests of several cheops packages share:
// waiting for a condition (Eventually), a free port (FreePort), the
// cheops binary built once (BuildBinary, Main), json-server started and
// stopped (StartJSONServer), and what to do when a program is missing.
// It imports nothing of cheops, so that the tests of every package,
// internal ones included, can use it.
//
// It decides what a test does when a program it needs (json-server,
// Chromium, HAProxy, etcd, iproute2, nftables) is missing: it fails,
// naming the program and how to install it, so that `make test` on a
// machine without them cannot pass with its end-to-end tests silently
// skipped. A user who knows and accepts it opts out with
// CHEOPS_ALLOW_SKIP=1: the test is then skipped with the same message, and
// `make test`'s summary lists it.
package testkit

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// AllowSkipEnv is the environment variable that turns a missing
// requirement from a failure into a skip, when set to 1.
const AllowSkipEnv = "CHEOPS_ALLOW_SKIP"

// InstallHint is how to install every program the tests need on Debian.
const InstallHint = "contrib/install-deps.sh (make deps) installs it"

// JSONServer is how to install json-server, the REST application the
// end-to-end tests run behind their agents.
const JSONServer = "npm install --global json-server@0.17.4"

// AllowSkip reports whether the user opted out of failing on missing
// requirements (CHEOPS_ALLOW_SKIP=1).
func AllowSkip() bool { return os.Getenv(AllowSkipEnv) == "1" }

// Tool returns the path of the first of names found on PATH. When none
// is, it fails the test (Missing) with install, the command that installs
// the program.
func Tool(t testing.TB, install string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Missing(t, strings.Join(names, " or ")+" is not installed ("+install+"; "+InstallHint+")")
	return ""
}

// Require fails the test with reason (Missing) unless ok.
func Require(t testing.TB, ok bool, reason string) {
	t.Helper()
	if !ok {
		Missing(t, reason)
	}
}

// Missing ends the test for a missing requirement: a failure, or a skip
// when the user set CHEOPS_ALLOW_SKIP=1. Either way the message starts
// with reason.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if AllowSkip() {
		t.Skip(reason)
		return
	}
	t.Fatalf("%s (%s=1 skips instead)", reason, AllowSkipEnv)
}
