package crdt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-ds-crdt/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"
)

func TestGroupDataStaysInsideItsSites(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.startAll("a", "b", "c")
	a, b, c := n.sites["a"], n.sites["b"], n.sites["c"]
	ctx := context.Background()
	ab, ac := []string{"b", "a"}, []string{"a", "c"}
	secret := "secret-of-a-and-b-7f3e"
	if err := a.m.Put(ctx, ab, "/r/one", []byte(secret)); err != nil {
		t.Fatal(err)
	}
	// A group {a,c} as well, so that c is busy with a group of its own.
	if err := a.m.Put(ctx, ac, "/r/two", []byte("for-a-and-c")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b holds the entry", func() error { return hasValue(b, ab, "/r/one", secret) })
	eventually(t, 10*time.Second, "c holds its own entry", func() error { return hasValue(c, ac, "/r/two", "for-a-and-c") })
	// More writes from both members, one by one and batched, so that any
	// leak has every chance to happen.
	for i := range 50 {
		if err := b.m.Put(ctx, ab, fmt.Sprintf("/r/more/%d", i), []byte(secret)); err != nil {
			t.Fatal(err)
		}
	}
	keys, vals := make([]string, 100), make([][]byte, 100)
	for i := range keys {
		keys[i], vals[i] = fmt.Sprintf("/r/batch/%d", i), []byte(secret)
	}
	if err := a.m.PutBatch(ctx, ab, keys, vals); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a holds b's writes", func() error { return hasValue(a, ab, "/r/more/49", secret) })
	eventually(t, 10*time.Second, "b holds a's batch", func() error { return hasValue(b, ab, "/r/batch/99", secret) })

	// c's view through the API: its own group only.
	var seen []string
	if err := c.m.Scan(ctx, "/", func(sites []string, key string, _ []byte) error {
		seen = append(seen, fmt.Sprint(sites)+key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []string{"[a c]/r/two"}) {
		t.Fatalf("c scans %v", seen)
	}
	if _, ok, _ := c.m.Get(ctx, ab, "/r/one"); ok {
		t.Fatal("c can read the {a,b} entry")
	}

	// c's datastore, every key and value: no key of the group, no value
	// holding the secret or a key name, none of the group's blocks under
	// any key, and no key naming one of the group's CIDs.
	blocks := map[string]string{} // block bytes → multihash key
	for k, v := range rawScan(t, a) {
		if strings.HasPrefix(k, "/g/a,b/blocks/") {
			blocks[string(v)] = path.Base(k)
		}
	}
	if len(blocks) < 52 {
		t.Fatalf("a holds only %d blocks of {a,b}", len(blocks))
	}
	for k, v := range rawScan(t, c) {
		if strings.Contains(k, "a,b") || strings.Contains(k, "/r/one") || strings.Contains(k, "/r/more") || strings.Contains(k, "/r/batch") {
			t.Errorf("c holds key %s", k)
		}
		if bytes.Contains(v, []byte(secret)) {
			t.Errorf("c holds the secret under %s", k)
		}
		if mh, ok := blocks[string(v)]; ok {
			t.Errorf("c holds block %s of {a,b} under %s", mh, k)
		}
		for _, mh := range blocks {
			if strings.Contains(k, mh) {
				t.Errorf("c holds key %s naming block %s of {a,b}", k, mh)
			}
		}
	}

	// No announcement of {a,b} reached c: c would have refused it (c is
	// not a member, so it cannot join the group), and it refused nothing;
	// b did receive announcements of {a,b} on its link from a (the count
	// works).
	if got := counterValue(c.m.metrics.refused); got != 0 {
		t.Errorf("c refused %v messages: announcements of {a,b} reached it", got)
	}
	if st := b.m.Status(ctx); !slices.ContainsFunc(st, func(s GroupStatus) bool { return s.Group == "a,b" && !s.LastHeard.IsZero() }) {
		t.Error("b received no announcement of {a,b}: the check is broken")
	}
}

func TestNonMemberIsRefused(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.startAll("a", "b", "c")
	a, c := n.sites["a"], n.sites["c"]
	ctx := context.Background()
	if err := a.m.Put(ctx, []string{"a", "b"}, "/r/one", []byte("x")); err != nil {
		t.Fatal(err)
	}
	heads := a.m.group("a,b").knownHeads(ctx)
	if len(heads) == 0 {
		t.Fatal("no heads")
	}

	// c asks a for a block of {a,b} over the block protocol: nothing.
	s, err := c.host.NewStream(ctx, n.ids["a"], BlockProtocol)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := json.Marshal(blockRequest{Group: "a,b", Want: []string{heads[0].String()}})
	if err := writeFrame(s, req); err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	if frame, err := readFrame(bufio.NewReader(s), maxFrame); err == nil {
		t.Fatalf("a answered a non-member with %d bytes", len(frame))
	}
	eventually(t, 5*time.Second, "the refusal is counted", func() error {
		if v := counterValue(a.m.metrics.refused); v < 1 {
			return fmt.Errorf("refused = %v", v)
		}
		return nil
	})

	// c announces heads of {a,b} on a link, with a block: refused, a
	// neither stores the block nor changes its heads.
	before := a.m.group("a,b").headsDigest(ctx)
	blk := blocks.NewBlock([]byte("forged delta"))
	s3, err := c.host.NewStream(ctx, n.ids["a"], LinkProtocol)
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := json.Marshal(linkHeader{Group: "a,b", Peers: []peer.ID{n.ids["a"], n.ids["b"]}})
	forged, _ := proto.Marshal(&pb.CRDTBroadcast{Heads: []*pb.Head{{Cid: blk.Cid().Bytes()}}})
	_ = writeFrame(s3, hdr)
	_ = writeFrame(s3, encodeMessage(forged, []blocks.Block{blk}))
	_ = s3.Close()
	eventually(t, 5*time.Second, "the link refusal is counted", func() error {
		if v := counterValue(a.m.metrics.refused); v < 2 {
			return fmt.Errorf("refused = %v", v)
		}
		return nil
	})
	if has, _ := a.m.group("a,b").blocks().Has(ctx, blk.Cid()); has {
		t.Fatal("a stored a block a non-member announced")
	}
	if after := a.m.group("a,b").headsDigest(ctx); after != before {
		t.Fatal("a's heads of {a,b} changed after a non-member's announcement")
	}

	// A link header that is not JSON: counted as malformed, the stream
	// reset, nothing of it kept.
	s4, err := c.host.NewStream(ctx, n.ids["a"], LinkProtocol)
	if err != nil {
		t.Fatal(err)
	}
	malformedBefore := counterValue(a.m.metrics.malformed)
	_ = writeFrame(s4, []byte("not a header"))
	_ = writeFrame(s4, encodeMessage(forged, []blocks.Block{blk}))
	eventually(t, 5*time.Second, "the malformed link message is counted", func() error {
		if v := counterValue(a.m.metrics.malformed); v < malformedBefore+1 {
			return fmt.Errorf("malformed = %v", v)
		}
		return nil
	})
	_ = s4.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s4.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a kept the stream of a malformed link message open: %v", err)
	}

	// c cannot write into a group that does not name it.
	if err := c.m.Put(ctx, []string{"a", "b"}, "/r/x", []byte("y")); !errors.Is(err, ErrNotMember) {
		t.Fatalf("c wrote into {a,b}: %v", err)
	}
	if got := c.m.Groups(); len(got) != 0 {
		t.Fatalf("c joined %d groups", len(got))
	}
}

func TestPartitionHealConverges(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.startAll("a", "b", "c")
	ctx := context.Background()
	abc := []string{"a", "b", "c"}
	if err := n.sites["a"].m.Put(ctx, abc, "/before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"b", "c"} {
		eventually(t, 10*time.Second, s+" has /before", func() error { return hasValue(n.sites[s], abc, "/before", "1") })
	}
	n.partition([]string{"a", "c"}, []string{"b"})
	const writes = 300
	var wg sync.WaitGroup
	for _, side := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < writes; i += 10 {
				if err := n.sites[side].m.Put(ctx, abc, fmt.Sprintf("/w/%s/%d", side, i), []byte(side)); err != nil {
					t.Error(err)
					return
				}
				keys, vals := make([]string, 9), make([][]byte, 9)
				for j := range keys {
					keys[j], vals[j] = fmt.Sprintf("/w/%s/%d", side, i+1+j), []byte(side)
				}
				if err := n.sites[side].m.PutBatch(ctx, abc, keys, vals); err != nil {
					t.Error(err)
					return
				}
			}
			// The same key from both sides.
			if err := n.sites[side].m.Put(ctx, abc, "/same", []byte("from-"+side)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	eventually(t, 10*time.Second, "c holds a's writes", func() error { return hasValue(n.sites["c"], abc, "/same", "from-a") })
	if _, ok, _ := n.sites["b"].m.Get(ctx, abc, "/w/a/0"); ok {
		t.Fatal("b received a write across the partition")
	}
	if _, ok, _ := n.sites["a"].m.Get(ctx, abc, "/w/b/0"); ok {
		t.Fatal("a received a write across the partition")
	}

	n.heal([]string{"a", "c"}, []string{"b"})
	eventually(t, 30*time.Second, "every site holds every write", func() error {
		for _, s := range abc {
			count := 0
			err := n.sites[s].m.Scan(ctx, "/w/", func(_ []string, key string, v []byte) error {
				if !strings.HasPrefix(key, "/w/"+string(v)+"/") {
					return fmt.Errorf("%s: %s = %q", s, key, v)
				}
				count++
				return nil
			})
			if err != nil {
				return err
			}
			if count != 2*writes {
				return fmt.Errorf("%s holds %d writes of %d", s, count, 2*writes)
			}
		}
		return nil
	})
	eventually(t, 10*time.Second, "one value for /same everywhere", func() error {
		var vals []string
		for _, s := range abc {
			v, _, _ := n.sites[s].m.Get(ctx, abc, "/same")
			vals = append(vals, string(v))
		}
		if vals[0] == "" || vals[0] != vals[1] || vals[1] != vals[2] {
			return fmt.Errorf("values %q", vals)
		}
		return nil
	})
	// Same heads everywhere: the replicas are one DAG.
	eventually(t, 10*time.Second, "same heads", func() error {
		var hs []string
		for _, s := range abc {
			hs = append(hs, fmt.Sprint(n.sites[s].m.group("a,b,c").knownHeads(ctx)))
		}
		if hs[0] != hs[1] || hs[1] != hs[2] {
			return fmt.Errorf("heads %v", hs)
		}
		return nil
	})
}

func TestRestartKeepsDataAndCatchesUp(t *testing.T) {
	for _, clean := range []bool{true, false} {
		t.Run(fmt.Sprintf("clean=%v", clean), func(t *testing.T) {
			n := newNet(t, "a", "b")
			n.startAll("a", "b")
			ctx := context.Background()
			ab := []string{"a", "b"}
			for i := range 100 {
				if err := n.sites["b"].m.Put(ctx, ab, fmt.Sprintf("/old/%d", i), []byte("kept")); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, 10*time.Second, "a has /old", func() error { return hasValue(n.sites["a"], ab, "/old/99", "kept") })
			n.stop("b", clean)
			for i := range 200 {
				if err := n.sites["a"].m.Put(ctx, ab, fmt.Sprintf("/new/%d", i), []byte("while away")); err != nil {
					t.Fatal(err)
				}
			}
			b := n.start("b")
			if b.m.Unclean() == clean {
				t.Fatalf("Unclean() = %v after a clean=%v stop", b.m.Unclean(), clean)
			}
			// The group is back from the registry, with its data, before
			// any network exchange matters.
			for i := range 100 {
				if err := hasValue(b, ab, fmt.Sprintf("/old/%d", i), "kept"); err != nil {
					t.Fatalf("after restart: %v", err)
				}
			}
			eventually(t, 20*time.Second, "b caught up", func() error {
				for i := range 200 {
					if err := hasValue(b, ab, fmt.Sprintf("/new/%d", i), "while away"); err != nil {
						return err
					}
				}
				return nil
			})
			if clean {
				if v := counterValue(b.m.metrics.repairs); v != 0 {
					t.Fatalf("%v repairs after a clean stop", v)
				}
			} else {
				eventually(t, 20*time.Second, "repair ran", func() error {
					if v := counterValue(b.m.metrics.repairs); v < 1 {
						return fmt.Errorf("%v repairs", v)
					}
					return nil
				})
			}
			// b fetched only what it lacked: the 200 new blocks, not the
			// 100 it had.
			if got := counterValue(b.m.metrics.blocksFetched); got > 200+20 {
				t.Errorf("b fetched %v blocks to catch up on 200", got)
			}
		})
	}
}

func TestWatchSeesLocalAndRemoteChanges(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	var mu sync.Mutex
	var got []string
	stop := n.sites["b"].m.Watch(func(sites []string, key string, value []byte, deleted bool) {
		mu.Lock()
		got = append(got, fmt.Sprintf("%v %s %s %v", sites, key, value, deleted))
		mu.Unlock()
	})
	defer stop()
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := n.sites["a"].m.Put(ctx, ab, "/remote", []byte("r")); err != nil {
		t.Fatal(err)
	}
	if err := n.sites["b"].m.Put(ctx, ab, "/local", []byte("l")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "both changes watched", func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(got, "[a b] /remote r false") || !slices.Contains(got, "[a b] /local l false") {
			return fmt.Errorf("watched %v", got)
		}
		return nil
	})
	if err := n.sites["a"].m.Delete(ctx, ab, "/remote"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the remote delete watched", func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(got, "[a b] /remote  true") {
			return fmt.Errorf("watched %v", got)
		}
		return nil
	})
}

// A batch watcher sees what a single watcher sees, in the same order, in
// fewer calls when changes come faster than it takes them: a merge of
// 200 keys that arrive together while it is held is delivered in a
// batch or a few, not in 200 calls.
func TestWatchBatchSeesWhatWatchSees(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	var mu sync.Mutex
	var single, batched []string
	calls := 0
	hold := make(chan struct{})
	stop := n.sites["b"].m.Watch(func(sites []string, key string, value []byte, deleted bool) {
		mu.Lock()
		defer mu.Unlock()
		single = append(single, fmt.Sprintf("%v %s %s %v", sites, key, value, deleted))
	})
	defer stop()
	stopBatch := n.sites["b"].m.WatchBatch(func(sites [][]string, keys []string, values [][]byte, deleted []bool) {
		<-hold
		mu.Lock()
		defer mu.Unlock()
		calls++
		for i := range keys {
			batched = append(batched, fmt.Sprintf("%v %s %s %v", sites[i], keys[i], values[i], deleted[i]))
		}
	})
	defer stopBatch()
	ctx := context.Background()
	ab := []string{"a", "b"}
	keys, vals := make([]string, 200), make([][]byte, 200)
	for i := range keys {
		keys[i], vals[i] = fmt.Sprintf("/k/%03d", i), []byte("v")
	}
	if err := n.sites["b"].m.Put(ctx, ab, "/first", []byte("f")); err != nil {
		t.Fatal(err)
	}
	if err := n.sites["a"].m.PutBatch(ctx, ab, keys, vals); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b's store has the batch", func() error { return hasValue(n.sites["b"], ab, "/k/199", "v") })
	close(hold)
	eventually(t, 10*time.Second, "both watchers saw every change", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(batched) < 201 || len(single) < 201 {
			return fmt.Errorf("%d changes seen in batches, %d one by one", len(batched), len(single))
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(batched, single) {
		t.Fatalf("batch watcher saw %d changes:\n%v\nthe single watcher %d:\n%v", len(batched), batched, len(single), single)
	}
	if calls > 10 {
		t.Fatalf("%d calls for %d changes: not batched", calls, len(batched))
	}
}

// TestWatcherThatBlocksDoesNotStallReplication: a watcher stuck for a
// while must not hold up the replica's merges (PutHook runs inside them).
func TestWatcherThatBlocksDoesNotStallReplication(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	release := make(chan struct{})
	stop := n.sites["b"].m.Watch(func([]string, string, []byte, bool) { <-release })
	defer stop()
	defer close(release)
	ctx := context.Background()
	ab := []string{"a", "b"}
	for i := range 100 {
		if err := n.sites["a"].m.Put(ctx, ab, fmt.Sprintf("/k/%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "b applied every write", func() error { return hasValue(n.sites["b"], ab, "/k/99", "v") })
}

func TestLeaveDropsTheGroup(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := n.sites["a"].m.Put(ctx, ab, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /k", func() error { return hasValue(n.sites["b"], ab, "/k", "v") })
	// a still holds the group: its heads pushed to b (on connect, by
	// anti-entropy) would have b join it again, as a member must. What is
	// tested is what Leave leaves at b, so a goes first.
	n.stop("a", true)
	if err := n.sites["b"].m.Leave(ctx, ab); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := n.sites["b"].m.Get(ctx, ab, "/k"); ok {
		t.Fatal("b still reads /k after Leave")
	}
	if keys := keysUnder(t, n.sites["b"], "/g/a,b"); len(keys) != 0 {
		t.Fatalf("b still holds %d keys of the group, e.g. %s", len(keys), keys[0])
	}
	n.stop("b", true)
	b := n.start("b")
	if got := len(b.m.Groups()); got != 0 {
		t.Fatalf("b reopened %d groups after Leave", got)
	}
}

func TestBadInput(t *testing.T) {
	n := newNet(t, "a")
	n.startAll("a")
	m := n.sites["a"].m
	ctx := context.Background()
	cases := []struct {
		name string
		err  error
		run  func() error
	}{
		{"put outside own groups", ErrNotMember, func() error { return m.Put(ctx, []string{"x", "y"}, "/k", nil) }},
		{"no sites", ErrBadGroup, func() error { return m.Put(ctx, nil, "/k", nil) }},
		{"bad site name", ErrBadGroup, func() error { return m.Put(ctx, []string{"a", "b,c"}, "/k", nil) }},
		{"unknown site", ErrUnknownSite, func() error { return m.Put(ctx, []string{"a", "nowhere"}, "/k", nil) }},
		{"batch length mismatch", ErrBadInput, func() error { return m.PutBatch(ctx, []string{"a"}, []string{"/k"}, nil) }},
		{"empty key", ErrBadInput, func() error { return m.Put(ctx, []string{"a"}, "", nil) }},
		{"get bad group", ErrBadGroup, func() error { _, _, err := m.Get(ctx, []string{""}, "/k"); return err }},
	}
	for _, c := range cases {
		if err := c.run(); !errors.Is(err, c.err) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.err)
		}
	}
	bad := DefaultConfig()
	if _, err := NewManager(ctx, bad); !errors.Is(err, ErrBadConfig) {
		t.Errorf("empty config: %v", err)
	}
	// A one-site group works without any peer.
	if err := m.Put(ctx, []string{"a"}, "/solo", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := hasValue(n.sites["a"], []string{"a"}, "/solo", "1"); err != nil {
		t.Fatal(err)
	}
}

// TestCrashDuringCatchUpIsRepaired crashes a site in the middle of
// applying a long branch (upstream issue #279: the branch can be left
// half-processed, its head already recorded) and restarts it: the repair
// after the unclean stop completes the branch.
func TestCrashDuringCatchUpIsRepaired(t *testing.T) {
	n := newNet(t, "a", "b")
	n.startAll("a", "b")
	ctx := context.Background()
	ab := []string{"a", "b"}
	if err := n.sites["a"].m.Put(ctx, ab, "/start", []byte("x")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b joined", func() error { return hasValue(n.sites["b"], ab, "/start", "x") })
	n.partition([]string{"a"}, []string{"b"})
	const writes = 3000
	for i := range writes {
		if err := n.sites["a"].m.Put(ctx, ab, fmt.Sprintf("/w/%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	n.heal([]string{"a"}, []string{"b"})
	// A branch is applied from its head down: the last write shows first,
	// the first write last. Crash in between.
	b := n.sites["b"]
	eventually(t, 20*time.Second, "b is half-way", func() error {
		if _, ok, _ := b.m.Get(ctx, ab, fmt.Sprintf("/w/%d", writes-1)); !ok {
			return errors.New("not started")
		}
		return nil
	})
	if _, ok, _ := b.m.Get(ctx, ab, "/w/0"); ok {
		t.Fatal("b applied the whole branch before the crash: raise writes")
	}
	n.stop("b", false)
	b = n.start("b")
	if !b.m.Unclean() {
		t.Fatal("the crash went unnoticed")
	}
	eventually(t, 30*time.Second, "b holds every write", func() error {
		count := 0
		if err := b.m.Scan(ctx, "/w/", func([]string, string, []byte) error { count++; return nil }); err != nil {
			return err
		}
		if count != writes {
			return fmt.Errorf("b holds %d of %d writes", count, writes)
		}
		return nil
	})
	eventually(t, 30*time.Second, "the repair completed", func() error {
		if v := counterValue(b.m.metrics.repairs); v < 1 {
			return fmt.Errorf("%v repairs", v)
		}
		return nil
	})
}

// Protocols lists exactly what a Manager serves: a node reserves them
// before its host listens (node.Config.Protocols), and one left out
// would be announced to peers only by identify's push, which a starved
// host loses.
func TestProtocolsAreWhatAManagerServes(t *testing.T) {
	n := newNet(t, "a")
	a := n.start("a")
	var served []protocol.ID
	for _, id := range a.host.Mux().Protocols() {
		if strings.HasPrefix(string(id), "/cheops/crdt/") {
			served = append(served, id)
		}
	}
	slices.Sort(served)
	want := slices.Sorted(slices.Values(Protocols))
	if !slices.Equal(served, want) {
		t.Fatalf("the manager serves %v; Protocols lists %v", served, want)
	}
}
