package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The demo prints commands that run as printed: the name when PATH finds
// this binary, else a path.
func TestCommandFor(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "bin", "cheops")
	other := filepath.Join(dir, "other", "cheops")
	for _, p := range []string{exe, other} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	found := func(p string) func(string) (string, error) {
		return func(string) (string, error) { return p, nil }
	}
	missing := func(string) (string, error) { return "", errors.New("not found") }
	for _, tc := range []struct {
		name, cwd string
		look      func(string) (string, error)
		want      string
	}{
		{"on PATH", dir, found(exe), "cheops"},
		{"another cheops on PATH", dir, found(other), filepath.Join("bin", "cheops")},
		{"not on PATH, under cwd", dir, missing, filepath.Join("bin", "cheops")},
		{"in cwd itself", filepath.Join(dir, "bin"), missing, "./cheops"},
		{"elsewhere", filepath.Join(dir, "other"), missing, exe},
	} {
		if got := commandFor(exe, tc.cwd, tc.look); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
