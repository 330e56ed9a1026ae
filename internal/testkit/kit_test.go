package testkit

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, 5*time.Second, "third call", func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("cond called %d times", n)
	}
	r := &recorder{TB: t}
	start := time.Now()
	Eventually(r, 50*time.Millisecond, "never", func() error { return errors.New("still not") })
	if !r.failed || !strings.Contains(r.msg, "never: not within 50ms: still not") {
		t.Fatalf("failed %v, message %q", r.failed, r.msg)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

func TestFreePort(t *testing.T) {
	port := FreePort(t)
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	// Below the kernel's ephemeral range: no ":0" socket of another test
	// can be handed this port.
	if n, _ := strconv.Atoi(port); n < freePortLow || n >= freePortHigh {
		t.Fatalf("port %s outside [%d, %d)", port, freePortLow, freePortHigh)
	}
}

func TestBufferConcurrent(t *testing.T) {
	var b Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			b.Write([]byte("x"))
		}
	}()
	for range 100 {
		_ = b.String()
	}
	<-done
	if got := b.String(); got != strings.Repeat("x", 100) {
		t.Fatalf("%q", got)
	}
}
