package catalog

import "context"

// watcher is one Watch: a channel with Config.WatchBuffer places for
// changes and one more, reserved for a KindResync.
type watcher struct {
	out chan Change
	// resyncLast: the last change queued was a resync (guarded by
	// Catalog.mu). While the channel is not empty, it is still unread.
	resyncLast bool
}

// Watch returns a channel with one Change per change of the resources
// this site holds, until ctx ends or the catalog closes (then the channel
// is closed). Any number of watchers can watch; none can slow the store
// or another watcher down: changes are offered without ever blocking.
//
// Slow watchers: a watcher has Config.WatchBuffer changes of room. When
// they are full, the catalog queues one Change{Kind: KindResync} in a
// place kept for it, and drops the changes that follow until the watcher
// reads again. A watcher that reads a resync re-reads what it follows
// (List, Get): every change it was not sent happened before it read the
// resync, so the re-read includes it. Nothing is lost; a slow watcher
// reads less.
func (c *Catalog) Watch(ctx context.Context) <-chan Change {
	w := &watcher{out: make(chan Change, c.cfg.WatchBuffer+1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		close(w.out)
		return w.out
	}
	c.watchers[w] = struct{}{}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case <-ctx.Done():
		case <-c.ctx.Done():
		}
		c.mu.Lock()
		delete(c.watchers, w)
		close(w.out)
		c.mu.Unlock()
	}()
	return w.out
}

// notifyLocked offers a change to every watcher. Only notifyLocked adds
// to a watcher's channel, under Catalog.mu, so the length it reads can
// only shrink before it sends: the sends never block.
func (c *Catalog) notifyLocked(ch Change) {
	for w := range c.watchers {
		switch n := len(w.out); {
		case n < c.cfg.WatchBuffer:
			w.out <- ch
			w.resyncLast = false
		case n == c.cfg.WatchBuffer && !w.resyncLast:
			w.out <- Change{Kind: KindResync}
			w.resyncLast = true
		default:
			// Full, and the change last queued, still unread, is a
			// resync that covers this one.
		}
	}
}
