package catalog

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// memNet is an in-memory replication network for unit tests. Every site
// has its own replica of each group it is in; a write reaches the other
// members' replicas at once, unless the link between the two sites is cut:
// then it waits, in order, until the link heals. A replica keeps the value
// that arrived last, so a key written by two sites can end different on
// two replicas, which is why the catalog gives every key one writer.
type memNet struct {
	mu     sync.Mutex
	stores map[string]*memStore
	cut    map[[2]string]bool
	held   []memMsg
}

// memMsg is a write on its way from one replica to another.
type memMsg struct {
	to      string
	sites   []string
	key     string
	value   []byte
	deleted bool
}

// memEvent is a change to deliver to a replica's watchers.
type memEvent struct {
	store *memStore
	msg   memMsg
}

func newMemNet() *memNet {
	return &memNet{stores: map[string]*memStore{}, cut: map[[2]string]bool{}}
}

// store returns site's replica, created empty on first use.
func (n *memNet) store(site string) *memStore {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stores[site]
	if s == nil {
		s = &memStore{net: n, self: site, groups: map[string]map[string][]byte{}, watchers: map[int]func([]string, string, []byte, bool){}}
		n.stores[site] = s
	}
	return s
}

func link(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// isolate cuts every link of site.
func (n *memNet) isolate(site string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for other := range n.stores {
		if other != site {
			n.cut[link(site, other)] = true
		}
	}
}

// heal restores every link and delivers what waited, in order.
func (n *memNet) heal() {
	n.mu.Lock()
	clear(n.cut)
	held := n.held
	n.held = nil
	var events []memEvent
	for _, m := range held {
		events = append(events, n.deliverLocked(m)...)
	}
	n.mu.Unlock()
	fire(events)
}

// deliverLocked applies a message to its replica and returns the events.
func (n *memNet) deliverLocked(m memMsg) []memEvent {
	s := n.stores[m.to]
	if s == nil {
		return nil
	}
	s.writeLocked(m)
	return s.eventsLocked(m)
}

// send writes at the sender's replica and sends to every other member.
func (n *memNet) send(from *memStore, sites []string, keys []string, values [][]byte, deleted bool) error {
	if !slices.Contains(sites, from.self) {
		return fmt.Errorf("memstore: %s is not in %v", from.self, sites)
	}
	n.mu.Lock()
	var events []memEvent
	for i, k := range keys {
		var v []byte
		if !deleted {
			v = slices.Clone(values[i])
		}
		local := memMsg{to: from.self, sites: sites, key: k, value: v, deleted: deleted}
		events = append(events, n.deliverLocked(local)...)
		for _, to := range sites {
			if to == from.self {
				continue
			}
			m := local
			m.to = to
			if n.cut[link(from.self, to)] {
				n.held = append(n.held, m)
				continue
			}
			events = append(events, n.deliverLocked(m)...)
		}
	}
	n.mu.Unlock()
	fire(events)
	return nil
}

func fire(events []memEvent) {
	for _, e := range events {
		for _, fn := range e.store.watcherFns() {
			fn(e.msg.sites, e.msg.key, e.msg.value, e.msg.deleted)
		}
	}
}

// memStore is one site's replica: a Store for unit tests.
type memStore struct {
	net      *memNet
	self     string
	groups   map[string]map[string][]byte // guarded by net.mu
	watchers map[int]func([]string, string, []byte, bool)
	next     int
	wmu      sync.Mutex
	syncs    int
	gets     int // guarded by net.mu
}

func groupKey(sites []string) string {
	s := slices.Clone(sites)
	slices.Sort(s)
	return strings.Join(s, ",")
}

func (s *memStore) writeLocked(m memMsg) {
	g := s.groups[groupKey(m.sites)]
	if g == nil {
		g = map[string][]byte{}
		s.groups[groupKey(m.sites)] = g
	}
	if m.deleted {
		delete(g, m.key)
	} else {
		g[m.key] = m.value
	}
}

func (s *memStore) eventsLocked(m memMsg) []memEvent {
	return []memEvent{{store: s, msg: m}}
}

func (s *memStore) watcherFns() []func([]string, string, []byte, bool) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	out := make([]func([]string, string, []byte, bool), 0, len(s.watchers))
	for _, fn := range s.watchers {
		out = append(out, fn)
	}
	return out
}

func (s *memStore) Put(ctx context.Context, sites []string, key string, value []byte) error {
	return s.PutBatch(ctx, sites, []string{key}, [][]byte{value})
}

func (s *memStore) PutBatch(_ context.Context, sites []string, keys []string, values [][]byte) error {
	if len(keys) != len(values) {
		return fmt.Errorf("memstore: %d keys, %d values", len(keys), len(values))
	}
	return s.net.send(s, sites, keys, values, false)
}

func (s *memStore) Get(_ context.Context, sites []string, key string) ([]byte, bool, error) {
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	s.gets++
	v, ok := s.groups[groupKey(sites)][key]
	return v, ok, nil
}

func (s *memStore) Delete(_ context.Context, sites []string, key string) error {
	return s.net.send(s, sites, []string{key}, nil, true)
}

func (s *memStore) Scan(_ context.Context, prefix string, fn func([]string, string, []byte) error) error {
	type kv struct {
		sites []string
		k     string
		v     []byte
	}
	var all []kv
	s.net.mu.Lock()
	for g, kvs := range s.groups {
		for k, v := range kvs {
			if strings.HasPrefix(k, prefix) {
				all = append(all, kv{strings.Split(g, ","), k, v})
			}
		}
	}
	s.net.mu.Unlock()
	for _, x := range all {
		if err := fn(x.sites, x.k, x.v); err != nil {
			return err
		}
	}
	return nil
}

func (s *memStore) Watch(fn func([]string, string, []byte, bool)) func() {
	s.wmu.Lock()
	id := s.next
	s.next++
	s.watchers[id] = fn
	s.wmu.Unlock()
	return func() {
		s.wmu.Lock()
		delete(s.watchers, id)
		s.wmu.Unlock()
	}
}

// Sync counts the calls: the catalog syncs before acknowledging a write.
func (s *memStore) Sync(context.Context) error {
	s.wmu.Lock()
	s.syncs++
	s.wmu.Unlock()
	return nil
}

func (s *memStore) syncCount() int {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.syncs
}

// keys returns what this replica holds, "group key" per line, sorted.
func (s *memStore) keys() []string {
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	var out []string
	for g, kvs := range s.groups {
		for k := range kvs {
			out = append(out, g+" "+k)
		}
	}
	slices.Sort(out)
	return out
}

// writeUnseen stores a value in a site's replica without telling its
// watchers: a change the catalog's view missed.
func (s *memStore) writeUnseen(sites []string, key string, value []byte) {
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	s.writeLocked(memMsg{to: s.self, sites: sites, key: key, value: value})
}
