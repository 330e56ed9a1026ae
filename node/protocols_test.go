package node

import (
	"bufio"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// A protocol reserved in Config.Protocols is announced from a
// connection's first identify, before any handler serves it (a peer then
// opens its streams without a negotiation round trip); a stream of it
// that arrives before the handler is set is reset, and once the handler
// is set it serves.
func TestReservedProtocolsAnnouncedFromTheStart(t *testing.T) {
	const reserved protocol.ID = "/cheops/test/reserved/1.0.0"
	c := newCluster(t, "paris", "berlin")
	cfg := fastConfig("paris", c.dirs["paris"], c.trust())
	cfg.Protocols = []protocol.ID{reserved}
	paris, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes["paris"] = paris
	berlin := c.start("berlin", paris.Addrs()...)
	pid := paris.Host().ID()
	eventually(t, 10*time.Second, "berlin's peerstore lists the reserved protocol for paris", func() error {
		got, err := berlin.Host().Peerstore().SupportsProtocols(pid, reserved)
		if err != nil || !slices.Contains(got, reserved) {
			return fmt.Errorf("supports %v (%v)", got, err)
		}
		return nil
	})
	if !slices.Contains(paris.Host().Mux().Protocols(), reserved) {
		t.Fatalf("paris does not list %s among its protocols", reserved)
	}

	ask := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := berlin.Host().NewStream(network.WithNoDial(ctx, "test"), pid, reserved)
		if err != nil {
			return "", err
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := s.Write([]byte("ping\n")); err != nil {
			return "", err
		}
		return bufio.NewReader(s).ReadString('\n')
	}
	if answer, err := ask(); err == nil {
		t.Fatalf("a stream before the handler was set answered %q", answer)
	}
	paris.Host().SetStreamHandler(reserved, func(s network.Stream) {
		defer s.Close()
		line, err := bufio.NewReader(s).ReadString('\n')
		if err == nil {
			_, _ = s.Write([]byte("pong:" + line))
		}
	})
	if answer, err := ask(); err != nil || answer != "pong:ping\n" {
		t.Fatalf("once served: %q, %v", answer, err)
	}
}
