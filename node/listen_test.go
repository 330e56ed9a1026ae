package node

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/multiformats/go-multiaddr"
)

func TestMissingListeners(t *testing.T) {
	m := multiaddr.StringCast
	listening := []multiaddr.Multiaddr{m("/ip4/127.0.0.1/tcp/4001"), m("/ip4/0.0.0.0/udp/40123/quic-v1")}
	for _, tc := range []struct {
		requested string
		missing   bool
	}{
		{"/ip4/127.0.0.1/tcp/4001", false},
		{"/ip4/127.0.0.1/tcp/0", false},
		{"/ip4/127.0.0.1/tcp/4002", true},
		{"/ip4/127.0.0.2/tcp/4001", true},
		{"/ip4/0.0.0.0/udp/0/quic-v1", false},
		{"/ip4/0.0.0.0/udp/40123/quic-v1", false},
		{"/ip4/0.0.0.0/udp/4001/quic-v1", true},
		{"/ip4/0.0.0.0/udp/40123", true},
		{"/ip6/::/tcp/4001", true},
	} {
		got := missingListeners([]multiaddr.Multiaddr{m(tc.requested)}, listening)
		if (len(got) > 0) != tc.missing {
			t.Errorf("%s: missing %v, want %v", tc.requested, got, tc.missing)
		}
	}
}

// freeTCPAndUDP returns a port free for both TCP and UDP on loopback.
func freeTCPAndUDP(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// A node whose listen address is taken — by another node, or by any
// process, on TCP or on UDP (QUIC) — refuses to start and says why; it
// leaves its data directory free.
func TestListenAddressTaken(t *testing.T) {
	c := newCluster(t, "paris", "berlin")
	port := strconv.Itoa(freeTCPAndUDP(t))
	both := []string{"/ip4/127.0.0.1/tcp/" + port, "/ip4/127.0.0.1/udp/" + port + "/quic-v1"}
	start := func(site string, listen []string) (*Node, error) {
		cfg := fastConfig(site, c.dirs[site], c.trust())
		cfg.Listen = listen
		return New(context.Background(), cfg)
	}
	paris, err := start("paris", both)
	if err != nil {
		t.Fatal(err)
	}
	defer paris.Close()
	// Two agents with one --listen (the default's situation).
	if _, err := start("berlin", both); !errors.Is(err, ErrListen) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second node on %v: %v, want ErrListen, address already in use", both, err)
	}
	paris.Close()

	// Only the TCP port taken, then only the UDP port.
	tcpPort, udpPort := strconv.Itoa(freeTCPAndUDP(t)), strconv.Itoa(freeTCPAndUDP(t))
	l, err := net.Listen("tcp", "127.0.0.1:"+tcpPort)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", "127.0.0.1:"+udpPort)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for taken, listen := range map[string][]string{
		"/tcp/" + tcpPort: {"/ip4/127.0.0.1/tcp/" + tcpPort, "/ip4/127.0.0.1/udp/0/quic-v1"},
		"/udp/" + udpPort: {"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/" + udpPort + "/quic-v1"},
	} {
		_, err := start("berlin", listen)
		if !errors.Is(err, ErrListen) || !strings.Contains(err.Error(), taken) {
			t.Errorf("%s taken: %v, want ErrListen naming it", taken, err)
		}
	}
	// Nothing of the failed starts holds berlin's data directory.
	b, err := start("berlin", []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}
