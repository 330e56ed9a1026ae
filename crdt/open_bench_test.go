package crdt

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkWake measures what waking a sleeping group and putting it back
// to sleep costs one site (go-ds-crdt's replica opened and closed): the
// price every write into a sleeping group pays at each member, with
// go-ds-crdt's default of 4 DAG workers and with 1.
func BenchmarkWake(b *testing.B) {
	for _, workers := range []int{4, 1} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			n := newNet(b, "a", "b")
			n.tune = func(c *Config) { c.Workers = workers }
			a := n.start("a")
			ctx := context.Background()
			g, err := a.m.join(ctx, []string{"a", "b"})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				_, done, _, err := g.use(ctx)
				if err != nil {
					b.Fatal(err)
				}
				done()
				if !g.sleep(ctx, time.Now().Add(time.Hour)) {
					b.Fatal("the group did not sleep")
				}
			}
		})
	}
}
