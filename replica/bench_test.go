package replica

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

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

// serialApp is a memApp that serves one call at a time, each taking
// service: a stand-in for json-server (one Node.js thread, the whole
// database written on every write).
type serialApp struct {
	*memApp
	serve   sync.Mutex
	service time.Duration
}

func (a *serialApp) Call(ctx context.Context, svc, method, path string, h http.Header, body []byte) (Answer, error) {
	a.serve.Lock()
	defer a.serve.Unlock()
	time.Sleep(a.service)
	return a.memApp.Call(ctx, svc, method, path, h, body)
}

// BenchmarkRunnerHeal measures how long a site takes to run and record
// what it owes after a heal, with the runner's scheduling only in play:
// an in-memory catalog that fills over about 1.4 s, as a returning
// site's does at a heal, with 200 owed creates and 40 resources owing
// chains of 1 to 10 updates (their operations arriving one by one in that
// time), run on an application serving one call at a time in 3 ms (as
// json-server holding a thousand items, per write, in cheops bench
// convergence). heal-ms is from
// the first write into the catalog to nothing owed; app-ms is the
// application's busy time (the floor).
func BenchmarkRunnerHeal(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		app := &serialApp{memApp: newMemApp(), service: 3 * time.Millisecond}
		cat, x := owedHere(b, app)
		rng := rand.New(rand.NewPCG(1, 2))
		type write struct {
			id, name string
			update   int // -1: the create
		}
		var writes []write
		var chains []write
		for i := range 200 {
			writes = append(writes, write{id: catalog.NewID(time.Unix(1000+int64(i), 0)), name: fmt.Sprintf("single%d", i), update: -1})
		}
		for i := range 40 {
			c := write{id: catalog.NewID(time.Unix(2000+int64(i), 0)), name: fmt.Sprintf("chain%d", i), update: -1}
			writes = append(writes, c)
			for u := range 1 + i%10 {
				chains = append(chains, write{id: c.id, name: c.name, update: u})
			}
		}
		rng.Shuffle(len(writes), func(i, j int) { writes[i], writes[j] = writes[j], writes[i] })
		// The updates of a chain come after its create, each at a random
		// point of the fill.
		for _, u := range chains {
			at := slices.IndexFunc(writes, func(w write) bool { return w.id == u.id && w.update == u.update-1 })
			k := at + 1 + rng.IntN(len(writes)-at)
			writes = slices.Insert(writes, k, u)
		}
		r, err := StartRunner(RunnerConfig{Catalog: cat, Executor: x})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		for i, w := range writes {
			if w.update < 0 {
				owe(b, cat, w.id, w.name, 0)
			} else {
				oweUpdate(b, cat, w.id, w.name, w.update)
			}
			if i%5 == 4 {
				time.Sleep(10 * time.Millisecond) // about 1.4 s in all
			}
		}
		for len(cat.Owing()) > 0 {
			time.Sleep(time.Millisecond)
		}
		b.ReportMetric(float64(time.Since(start))/float64(time.Millisecond), "heal-ms")
		b.ReportMetric(float64(len(writes))*float64(app.service)/float64(time.Millisecond), "app-ms")
		b.StopTimer()
		r.Close()
		b.StartTimer()
	}
}
