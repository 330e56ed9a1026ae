package bench

import (
	"cheops/internal/testkit"
	"context"
	"log/slog"
	"os"
	"testing"
)

func TestConvergenceSmall(t *testing.T) {
	needJSONServer(t)
	env := Env{Binary: testkit.BuildBinary(t), Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	res, err := RunConvergence(context.Background(), env, ConvergenceOptions{
		Cases: []ConvergenceCase{{Sites: 3, Writes: 40}}, Repetitions: 1, Resources: 10, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cases) != 1 || len(res.Cases[0].Runs) != 1 {
		t.Fatalf("result shape: %+v", res)
	}
	run := res.Cases[0].Runs[0]
	if run.Accepted != 40 || run.Refused != 0 {
		t.Fatalf("%d writes accepted, %d refused during the partition; want all 40 accepted", run.Accepted, run.Refused)
	}
	if run.Owed == 0 {
		t.Fatal("nothing was owed at the heal: the partition did not separate any replica")
	}
	if run.Catalog <= 0 || run.Applied < run.Catalog {
		t.Fatalf("catalog converged %v, applied %v after the heal", run.Catalog, run.Applied)
	}
	// Reconnected comes from the sites' own state change times (GET
	// /v1/sites "since"): after the heal, and before the poll that saw
	// every site up (equal means the times were missing).
	if run.Reconnected <= 0 || run.Reconnected >= run.ReconnectedPoll {
		t.Fatalf("reconnected %v after the heal, seen by the poll %v", run.Reconnected, run.ReconnectedPoll)
	}
	t.Logf("owed %d; reconnected %v (poll %v), catalog %v, applied %v after the heal", run.Owed, run.Reconnected, run.ReconnectedPoll, run.Catalog, run.Applied)
}
