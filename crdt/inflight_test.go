package crdt

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// losing makes s lose the link messages of the groups lose names while
// on is set, and counts them.
type losing struct {
	on   atomic.Bool
	lost atomic.Int64
}

func loseWhileOn(s *site, groups func(string) bool) *losing {
	l := &losing{}
	loseLinks(s, func(group string) bool {
		if !l.on.Load() || !groups(group) {
			return false
		}
		l.lost.Add(1)
		return true
	})
	return l
}

// waitLost waits until l has lost n messages.
func (l *losing) waitLost(t *testing.T, n int64) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d messages lost", n), func() error {
		if got := l.lost.Load(); got < n {
			return fmt.Errorf("%d lost", got)
		}
		return nil
	})
}

// TestFirstAnnouncementInFlightIsNotPushedByAnotherMember: c writes
// into a new group of a, b and c; a has read the announcement, b has
// not (here it loses it; under load it reads it seconds late). b's round
// with a does not name the group, which b has not joined: a does not
// push its heads while the writer's announcement may be on its way
// (firstAnnouncementDue), for at most inFlightFor, and at once once a
// message of it with b was dropped at a.
func TestFirstAnnouncementInFlightIsNotPushedByAnotherMember(t *testing.T) {
	n := newNet(t, "a", "b", "c")
	n.tune = onlyRounds(time.Hour) // the test runs the rounds
	n.startAll("a", "b", "c")
	a, b, c := n.sites["a"], n.sites["b"], n.sites["c"]
	ctx := context.Background()
	abc := []string{"a", "b", "c"}
	name, _, _ := groupName(abc)
	lose := loseWhileOn(b, func(group string) bool { return group == name })
	lose.on.Store(true)
	// b shares a group with a already: its round with a is not empty.
	ab := []string{"a", "b"}
	if err := a.m.Put(ctx, ab, "/ab", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /ab", func() error { return hasValue(b, ab, "/ab", "v") })
	if err := c.m.Put(ctx, abc, "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "a has /k", func() error { return hasValue(a, abc, "/k", "v") })
	lose.waitLost(t, 1)
	before := repairsOf(a)
	if _, err := b.m.digestRound(ctx, a.id, false); err != nil {
		t.Fatal(err)
	}
	before.none(t, "in b's round: the group's first announcement is on its way to b")
	g := a.m.group(name)
	now := time.Now().UnixNano()
	if !a.m.firstAnnouncementDue(g, b.id, now) {
		t.Error("a no longer takes c's announcement for on its way to b, right after reading it")
	}
	if a.m.firstAnnouncementDue(g, b.id, now+a.m.inFlightFor()) {
		t.Error("a still takes c's announcement for on its way to b after inFlightFor")
	}
	// A message of the group with b dropped at a: the group is compared
	// at once (a's round on the loss), and b gets c's write.
	lose.on.Store(false)
	a.m.lost(name, b.id)
	if a.m.firstAnnouncementDue(g, b.id, time.Now().UnixNano()) {
		t.Error("a holds back the group after a message of it with b was dropped")
	}
	eventually(t, 10*time.Second, "b has /k", func() error { return hasValue(b, abc, "/k", "v") })
}

// unreadWrite starts a and b, which share the group {a,b} (rounds run
// by the test only): b has a's first write, and has lost the
// announcement of a's second, /1, which a wrote on its link (under load,
// b would read it late). b keeps losing every link message while lose
// is on.
func unreadWrite(t *testing.T) (a, b *site, lose *losing) {
	t.Helper()
	n := newNet(t, "a", "b")
	n.tune = onlyRounds(time.Hour)
	n.startAll("a", "b")
	a, b = n.sites["a"], n.sites["b"]
	ctx := context.Background()
	ab := []string{"a", "b"}
	lose = loseWhileOn(b, func(string) bool { return true })
	if err := a.m.Put(ctx, ab, "/0", []byte("v")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b has /0", func() error { return hasValue(b, ab, "/0", "v") })
	lose.on.Store(true)
	if err := a.m.Put(ctx, ab, "/1", []byte("v")); err != nil {
		t.Fatal(err)
	}
	name, _, _ := groupName(ab)
	eventually(t, 10*time.Second, "a's announcement of /1 written to b", func() error {
		if !a.m.links.inFlight(b.id, a.m.group(name), 0) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	lose.waitLost(t, 1)
	return a, b, lose
}

// TestAnnouncementInFlightIsNotCompared: a's announcement of a new delta
// to b is written but not read (b loses it here). Rounds between them,
// asked by either, leave the group out (settling) rather than find it
// different and push its heads: b reads the announcement in a moment.
// Once the last comparison found it different, it is compared whatever
// is in flight.
func TestAnnouncementInFlightIsNotCompared(t *testing.T) {
	a, b, lose := unreadWrite(t)
	ctx := context.Background()
	ab := []string{"a", "b"}
	name, _, _ := groupName(ab)
	before := repairsOf(a)
	res, err := a.m.digestRound(ctx, b.id, false)
	if err != nil || res.deferred != 1 {
		t.Fatalf("a's round with b: %+v, %v; want the group deferred", res, err)
	}
	if _, err := b.m.digestRound(ctx, a.id, false); err != nil {
		t.Fatal(err)
	}
	before.none(t, "while its announcement is in flight")
	// Found different once (a round of connection compares every group),
	// the group is compared by a at its next rounds, in flight or not
	// (b may still leave it out while it merges the heads a pushed).
	if _, err := a.m.digestRound(ctx, b.id, true); err != nil {
		t.Fatal(err)
	}
	g := a.m.group(name)
	if !a.m.links.inFlight(b.id, g, 0) {
		t.Fatal("a's announcement of /1 no longer in flight")
	}
	// (The heads b pushed back in that round may still be in hand at
	// a: those are merged first, whatever the comparison found.)
	eventually(t, 10*time.Second, "a merged b's heads", func() error {
		if g.merging() {
			return fmt.Errorf("still merging")
		}
		return nil
	})
	if a.m.settling(g, b.id, time.Now().UnixNano(), a.m.linkedSince(b.id)) {
		t.Error("a leaves out of its rounds with b a group found different, because its announcement is in flight")
	}
	lose.on.Store(false)
	eventually(t, 10*time.Second, "b has /1", func() error {
		if _, err := a.m.digestRound(ctx, b.id, false); err != nil {
			return err
		}
		return hasValue(b, ab, "/1", "v")
	})
}

// TestLossStartsARound: a message of a group dropped at a (a link that
// could not write it) starts a round with the member at once, not at
// the pair's next interval (an hour away here), and the member gets the
// write.
func TestLossStartsARound(t *testing.T) {
	a, b, lose := unreadWrite(t)
	ab := []string{"a", "b"}
	name, _, _ := groupName(ab)
	lose.on.Store(false)
	answered := counterValue(b.m.metrics.digestRoundsAnswered)
	a.m.lost(name, b.id)
	eventually(t, 10*time.Second, "b has /1", func() error { return hasValue(b, ab, "/1", "v") })
	if got := counterValue(b.m.metrics.digestRoundsAnswered); got <= answered {
		t.Errorf("b answered %v rounds after a's loss, want one", got-answered)
	}
}

// repairs are a site's anti-entropy repair counters at one moment.
type repairs struct {
	s                  *site
	mismatches, pushed float64
}

func repairsOf(s *site) repairs {
	return repairs{s, counterValue(s.m.metrics.digestMismatches), counterValue(s.m.metrics.headsPushed)}
}

// none fails t if the site found a group different or pushed heads
// since r was read.
func (r repairs) none(t *testing.T, when string) {
	t.Helper()
	if got := counterValue(r.s.m.metrics.digestMismatches); got != r.mismatches {
		t.Errorf("%s found %v groups different %s, want none", r.s.name, got-r.mismatches, when)
	}
	if got := counterValue(r.s.m.metrics.headsPushed); got != r.pushed {
		t.Errorf("%s pushed heads %v times %s, want none", r.s.name, got-r.pushed, when)
	}
}
