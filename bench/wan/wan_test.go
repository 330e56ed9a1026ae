package wan

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echo starts an echo server on ip and returns its address.
func echo(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

// dialFrom opens a connection from the given local address.
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes one byte and waits for it back, within limit.
func roundTrip(c net.Conn, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(limit))
	if _, err := c.Write([]byte{1}); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func newTestNetwork(t *testing.T) (*Network, string) {
	n := New(nil)
	t.Cleanup(func() { n.Close() })
	n.AddSite("a", SiteAddr(0))
	n.AddSite("b", SiteAddr(1))
	relay, err := n.Expose("b", RelayAddr(1), echo(t, SiteAddr(1)))
	if err != nil {
		t.Fatal(err)
	}
	return n, relay
}

func TestDelayAppliesBetweenSitesOnly(t *testing.T) {
	n, relay := newTestNetwork(t)
	n.SetRTT(40 * time.Millisecond)
	fromA := dialFrom(t, SiteAddr(0), relay)
	for range 3 {
		rtt, err := roundTrip(fromA, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if rtt < 40*time.Millisecond {
			t.Fatalf("a→b round trip %v, want at least the 40ms set", rtt)
		}
	}
	// A client on 127.0.0.1 is no site; it is relayed all the same.
	if _, err := roundTrip(dialFrom(t, "127.0.0.1", relay), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Changing the delay applies to the next bytes.
	n.SetDelay("a", "b", 0)
	if _, err := roundTrip(fromA, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestCutStallsThenHealCloses(t *testing.T) {
	n, relay := newTestNetwork(t)
	fromA := dialFrom(t, SiteAddr(0), relay)
	if _, err := roundTrip(fromA, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	n.Cut([]string{"a"}, []string{"b"})
	_, err := roundTrip(fromA, 300*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("across a cut: %v, want a stall (deadline exceeded)", err)
	}
	// A new connection across the cut hangs too.
	hanging := dialFrom(t, SiteAddr(0), relay)
	if _, err := roundTrip(hanging, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection across a cut: %v, want a stall", err)
	}
	// Other pairs are unaffected: a client still gets through.
	if _, err := roundTrip(dialFrom(t, "127.0.0.1", relay), 5*time.Second); err != nil {
		t.Fatalf("client during a cut between a and b: %v", err)
	}
	n.Heal()
	fromA.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(fromA, make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled link after heal: %v, want it closed", err)
	}
	if _, err := roundTrip(dialFrom(t, SiteAddr(0), relay), 5*time.Second); err != nil {
		t.Fatalf("new connection after heal: %v", err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	n, relay := newTestNetwork(t)
	c := dialFrom(t, SiteAddr(0), relay)
	if _, err := roundTrip(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	n.Cut([]string{"a"}, []string{"b"})
	n.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("link after Close: %v, want it closed", err)
	}
	if _, err := net.DialTimeout("tcp", relay, time.Second); err == nil {
		t.Fatal("relay still accepts after Close")
	}
}

func TestOneWayCutStallsOneDirection(t *testing.T) {
	n, relay := newTestNetwork(t)
	fromA := dialFrom(t, SiteAddr(0), relay)
	if _, err := roundTrip(fromA, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// b's bytes to a are dropped; a's reach b (the echo's answer does not
	// come back).
	n.CutOneWay([]string{"b"}, []string{"a"})
	if _, err := roundTrip(fromA, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("round trip across a one-way cut: %v, want a stall", err)
	}
	// A new connection hangs either way: its handshake needs both.
	if _, err := roundTrip(dialFrom(t, SiteAddr(0), relay), 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection across a one-way cut: %v, want a stall", err)
	}
	n.Heal()
	fromA.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(fromA, make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled link after heal: %v, want it closed", err)
	}
}

func TestOneWayCutLetsTheOtherDirectionThrough(t *testing.T) {
	n := New(nil)
	t.Cleanup(func() { n.Close() })
	n.AddSite("a", SiteAddr(0))
	n.AddSite("b", SiteAddr(1))
	// b listens behind its relay and keeps what it receives.
	l, err := net.Listen("tcp", net.JoinHostPort(SiteAddr(1), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan byte, 16)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var b [1]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
			got <- b[0]
		}
	}()
	relay, err := n.Expose("b", RelayAddr(1), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fromA := dialFrom(t, SiteAddr(0), relay)
	send := func(v byte, what string) {
		t.Helper()
		if _, err := fromA.Write([]byte{v}); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-got:
			if b != v {
				t.Fatalf("b received %d, want %d", b, v)
			}
		case <-time.After(5 * time.Second):
			t.Fatal(what)
		}
	}
	// The link is up (the relay reached b) before the cut: a connection
	// still being relayed when the cut comes hangs, as a handshake would.
	send(1, "a's bytes did not reach b")
	n.CutOneWay([]string{"b"}, []string{"a"})
	send(7, "a's bytes did not reach b across a cut of b → a only")
}
