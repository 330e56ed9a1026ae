// Package version says which build of cheops is running.
//
// The Makefile's build sets it with
//
//	go build -ldflags "-X cheops/version.version=$(git describe --tags --always --dirty)"
//
// A binary built otherwise (go build, go install, go test) reports what
// the Go toolchain recorded: the module version, or the VCS revision and
// whether the tree was modified.
package version

import (
	"runtime/debug"
	"sync"
)

// version is set at link time (-X cheops/version.version=…).
var version string

var fromBuild = sync.OnceValue(func() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return fromBuildInfo(info)
})

// String is the version of this build: the one set at link time, else one
// derived from the build information, else "unknown".
func String() string {
	if version != "" {
		return version
	}
	return fromBuild()
}

// fromBuildInfo derives a version from the toolchain's build information:
// the main module's version when it is a release (go install m@v1.2.3),
// else "devel" with the VCS revision (12 digits) and "-dirty" when the
// tree had changes.
func fromBuildInfo(info *debug.BuildInfo) string {
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		rev += "-dirty"
	}
	return "devel-" + rev
}
