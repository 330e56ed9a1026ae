package testkit

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"
)

// startGroup starts a shell in a group of its own that starts a sleep
// beside it, and waits until both run.
func startGroup(t *testing.T, ctx context.Context) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, "sh", "-c", "sleep 60 & wait")
	OwnGroup(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { EndGroup(cmd.Process.Pid) })
	Eventually(t, 10*time.Second, "the shell and its sleep run in their group", func() error {
		if n := groupRunning(cmd.Process.Pid); n != 2 {
			return fmt.Errorf("%d processes run in the group", n)
		}
		return nil
	})
	return cmd
}

// EndGroup ends the whole group: the sleep the shell started too.
func TestEndGroupEndsWhatTheProcessStarted(t *testing.T) {
	cmd := startGroup(t, context.Background())
	EndGroup(cmd.Process.Pid)
	cmd.Wait()
	if n := groupRunning(cmd.Process.Pid); n != 0 {
		t.Fatalf("%d processes of the group run after EndGroup", n)
	}
}

// The context's end kills the group, not only the first process.
func TestOwnGroupKilledWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := startGroup(t, ctx)
	cancel()
	if err := cmd.Wait(); err == nil {
		t.Fatal("the shell was not killed")
	}
	Eventually(t, 10*time.Second, "the shell's sleep killed with it", func() error {
		if n := groupRunning(cmd.Process.Pid); n != 0 {
			return fmt.Errorf("%d processes of the group run", n)
		}
		return nil
	})
}
