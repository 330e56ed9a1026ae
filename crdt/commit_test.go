package crdt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Concurrent writers into one group, on two of its sites at once, with
// single puts and batches: every write is kept (readable at every member
// afterwards, with its value), and concurrent writes shared deltas.
func TestGroupCommitKeepsEveryWrite(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.startAll("a", "b", "c")
	ctx := context.Background()
	abc := []string{"a", "b", "c"}
	const writers, writes = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers)
	for _, writer := range []string{"a", "b"} {
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := n.sites[writer].m
				for i := range writes {
					key := fmt.Sprintf("/w/%s/%d/%d", writer, w, i)
					var err error
					if i%2 == 0 {
						err = m.Put(ctx, abc, key, []byte(key))
					} else {
						err = m.PutBatch(ctx, abc, []string{key, key + "/x"}, [][]byte{[]byte(key), []byte(key + "/x")})
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var want []string
	for _, writer := range []string{"a", "b"} {
		for w := range writers {
			for i := range writes {
				key := fmt.Sprintf("/w/%s/%d/%d", writer, w, i)
				want = append(want, key)
				if i%2 == 1 {
					want = append(want, key+"/x")
				}
			}
		}
	}
	for _, s := range []string{"a", "b", "c"} {
		eventually(t, 30*time.Second, s+" holds every write", func() error {
			for _, key := range want {
				if err := hasValue(n.sites[s], abc, key, key); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for _, s := range []string{"a", "b"} {
		commits, calls := counterValue(n.sites[s].m.metrics.commits), counterValue(n.sites[s].m.metrics.committedWrites)
		t.Logf("%s: %.0f writes in %.0f deltas", s, calls, commits)
		if calls != writers*writes {
			t.Errorf("%s: %.0f writes committed, want %d", s, calls, writers*writes)
		}
		if commits >= calls {
			t.Errorf("%s: %.0f deltas for %.0f concurrent writes: none shared", s, commits, calls)
		}
	}
}

// Writes of one key queued together: the last queued wins, as if they
// had been committed one after the other, at every member.
func TestGroupCommitLastQueuedWins(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	a := n.sites["a"]
	ab := []string{"a", "b"}
	g, err := a.m.join(context.Background(), ab)
	if err != nil {
		t.Fatal(err)
	}
	// Queue three writes before any commit runs (as if a commit were in
	// progress), then commit them as one batch.
	g.commits.running = true
	var wg sync.WaitGroup
	for _, v := range []string{"1", "2", "3"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.write(context.Background(), []string{"/k"}, [][]byte{[]byte(v)}); err != nil {
				t.Error(err)
			}
		}()
		eventually(t, 5*time.Second, "write "+v+" queued", func() error {
			g.commits.mu.Lock()
			defer g.commits.mu.Unlock()
			if len(g.commits.queue) == 0 || string(g.commits.queue[len(g.commits.queue)-1].values[0]) != v {
				return errors.New("not queued yet")
			}
			return nil
		})
	}
	a.m.wg.Add(1)
	go g.commitLoop(a.m.ctx, false)
	wg.Wait()
	if got := counterValue(a.m.metrics.commits); got != 1 {
		t.Fatalf("%.0f deltas for three queued writes, want 1", got)
	}
	for _, s := range []string{"a", "b"} {
		eventually(t, 10*time.Second, s+" holds the last value", func() error { return hasValue(n.sites[s], ab, "/k", "3") })
	}
}

// A write whose caller gave up before its commit started is left out.
func TestGroupCommitSkipsCancelledWrites(t *testing.T) {
	n := newNet(t, "a")
	a := n.start("a")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.m.Put(ctx, []string{"a"}, "/gone", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("put with a cancelled context: %v", err)
	}
	if err := a.m.Put(context.Background(), []string{"a"}, "/kept", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := hasValue(a, []string{"a"}, "/kept", "y"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := a.m.Get(context.Background(), []string{"a"}, "/gone"); err != nil || ok {
		t.Fatalf("the cancelled write was applied (present %v, err %v)", ok, err)
	}
}

// BenchmarkConcurrentWriters measures writes per second into one group
// of two sites from 1, 8 and 32 concurrent writers at one site, each
// write a catalog create (PutBatch of two catalog-sized values), while
// the other member applies them; with the process's CPU time per write
// (less sensitive than writes/s to what else runs on the machine) and
// the writes that shared one delta.
func BenchmarkConcurrentWriters(b *testing.B) {
	for _, writers := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			n := newNet(b, "a", "b")
			n.startAll("a", "b")
			m := n.sites["a"].m
			ab := []string{"a", "b"}
			val := []byte(`{"site":"a","status":"ok","local_id":"12345","hlc":"1763880000000000000.0"}`)
			var next atomic.Int64
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			var wg sync.WaitGroup
			for range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := next.Add(1); k <= int64(b.N); k = next.Add(1) {
						keys := []string{fmt.Sprintf("/bench/%d/meta", k), fmt.Sprintf("/bench/%d/op/0", k)}
						if err := m.PutBatch(context.Background(), ab, keys, [][]byte{val, val}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/write")
			if d := counterValue(m.metrics.commits); d > 0 {
				b.ReportMetric(float64(b.N)/d, "writes/delta")
			}
		})
	}
}

// cpuTime is the CPU time the process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A commit waits for the writes announced into its group (Expect) and
// shares one delta with them; a write nobody announced besides it
// commits at once, however long the linger.
func TestGroupCommitWaitsForAnnouncedWrites(t *testing.T) {
	n := newNet(t, "a", "b")
	n.tune = func(c *Config) { c.CommitLinger = time.Hour }
	n.startAll("a", "b")
	a := n.sites["a"]
	ab := []string{"a", "b"}
	ctx := context.Background()
	// Alone: committed without waiting (an hour would fail the test).
	if err := a.m.Put(ctx, ab, "/alone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	g, err := a.m.join(ctx, ab)
	if err != nil {
		t.Fatal(err)
	}
	before := counterValue(a.m.metrics.commits)
	// Two writes announced; the first to arrive waits for the second.
	first, second := a.m.Expect(ab), a.m.Expect([]string{"b", "a"})
	queued := func(k int) func() error {
		return func() error {
			g.commits.mu.Lock()
			defer g.commits.mu.Unlock()
			if len(g.commits.queue) != k {
				return fmt.Errorf("%d writes queued, want %d", len(g.commits.queue), k)
			}
			return nil
		}
	}
	var wg sync.WaitGroup
	first()
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.m.Put(ctx, ab, fmt.Sprintf("/shared/%d", i), []byte("y")); err != nil {
				t.Error(err)
			}
		}()
		// The first waits for the second, announced; the second queues
		// behind it (its caller has not said it arrived yet).
		eventually(t, 5*time.Second, "the writes wait", queued(i+1))
	}
	second()
	wg.Wait()
	if got := counterValue(a.m.metrics.commits) - before; got != 1 {
		t.Fatalf("%.0f deltas for two announced writes, want 1", got)
	}
	// Arrived twice: counted once.
	first()
	if err := a.m.Put(ctx, ab, "/alone/again", []byte("z")); err != nil {
		t.Fatal(err)
	}
}
