package main

import (
	"cheops/internal/testkit"
	"os/exec"
	"strings"
	"testing"
)

func TestCompletion(t *testing.T) {
	out, code := run(t, "completion", "bash")
	if code != 0 || !strings.Contains(out, "complete -o default -F _cheops_complete cheops") {
		t.Fatalf("bash script: %d %q", code, out)
	}
	if _, code := run(t, "completion", "fish"); code != exitBadUsage {
		t.Fatalf("unknown shell: exit %d", code)
	}
	// The candidates the script asks for come from the binary itself.
	got, err := exec.Command(testkit.BuildBinary(t), "--generate-bash-completion").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"agent", "catalog", "demo", "request", "scope", "sites"} {
		if !strings.Contains(string(got), cmd+"\n") {
			t.Errorf("completion candidates lack %q: %q", cmd, got)
		}
	}
}
