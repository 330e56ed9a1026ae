package replica

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"cheops/catalog"
	"cheops/crdt"
)

// BenchmarkOwedCreates measures the executor's own cost of running owed
// creates, with the site's real journal (a pebble datastore, each entry
// synced before the application is called) and an in-memory application
// that answers at once: what a returning site spends per create besides
// its application's time. 16 creates run at once, as the runner's
// workers do.
func BenchmarkOwedCreates(b *testing.B) {
	store, err := crdt.OpenStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	x, err := NewExecutor(Config{App: newMemApp(), Journal: store})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				id := fmt.Sprintf("01BENCH%019d", i)
				op := catalog.Operation{ID: "op" + id, Resource: id, Origin: "paris", At: catalog.Timestamp{Wall: int64(i + 1)},
					Method: http.MethodPost, Path: "/posts", Body: []byte(`{"n":1}`)}
				if r := x.ApplyOwed(ctx, []Job{{Op: op, Service: "posts", Create: true, Collection: "/posts", Owed: true}}); len(r) != 1 || !r[0].OK() {
					b.Errorf("create %d: %+v", i, r)
				}
			}
		}()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}
