package main

import (
	"cheops/internal/testkit"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `cheops --version` prints the version set at link time (the Makefile's
// build), else one from the build information; an agent's /v1/health
// reports the same.
func TestVersion(t *testing.T) {
	out, err := exec.Command(testkit.BuildBinary(t), "--version").Output()
	got := strings.TrimSpace(string(out))
	if err != nil || !strings.HasPrefix(got, "cheops version ") || got == "cheops version " {
		t.Fatalf("--version: %v %q", err, out)
	}
	a := startAgent(t, "paris", filepath.Join(t.TempDir(), "paris"), "--trust-all")
	h, err := healthOf(a.api)
	if err != nil || "cheops version "+h.Version != got {
		t.Fatalf("health reports version %q (%v), --version %q", h.Version, err, got)
	}

	bin := filepath.Join(t.TempDir(), "cheops")
	build := exec.Command("go", "build", "-ldflags", "-X cheops/version.version=v1.2.3-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "cheops version v1.2.3-test" {
		t.Fatalf("--version of a build with -ldflags: %v %q", err, out)
	}
}
