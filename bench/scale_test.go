package bench

import (
	"context"
	"io"
	"log/slog"
	"testing"
)

func TestScaleSmall(t *testing.T) {
	env := Env{Dir: t.TempDir(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	res, err := RunScale(context.Background(), env, []ScaleCase{{Sites: 3, Resources: 20}, {Sites: 5, Resources: 20}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cases) != 2 {
		t.Fatalf("%d cases, want 2", len(res.Cases))
	}
	for _, c := range res.Cases {
		if c.HeapPerSite == 0 || c.DiskPerSite == 0 || c.WritesPerSecond <= 0 || c.Converged <= 0 {
			t.Fatalf("empty figures: %+v", c)
		}
		if c.Groups < 1 || c.Groups > c.Sites*(c.Sites-1)/2 {
			t.Fatalf("%d groups for %d sites", c.Groups, c.Sites)
		}
	}
	if _, err := RunScale(context.Background(), Env{Agents: []string{"http://x"}, Log: env.Log}, nil); err == nil {
		t.Fatal("scale accepted --agents")
	}
}
