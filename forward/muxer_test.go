package forward

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// BenchmarkStreamBulk moves 64 MiB on one libp2p stream between two
// hosts over loopback TCP (TLS 1.3 + yamux, as between agents) with the
// muxer's settings and the writes' size varied: what a hop's large body
// could gain from each, in MiB/s and in CPU per MiB (both ends).
func BenchmarkStreamBulk(b *testing.B) {
	const size = 64 << 20
	type variant struct {
		name  string
		tune  func(c *yamux.Transport)
		write int
	}
	for _, v := range []variant{
		{name: "default-64k", write: 64 << 10},
		{name: "default-256k", write: 256 << 10},
		{name: "msg256k-256k", tune: func(c *yamux.Transport) { c.MaxMessageSize = 256 << 10 }, write: 256 << 10},
		{name: "msg1m-1m", tune: func(c *yamux.Transport) { c.MaxMessageSize = 1 << 20 }, write: 1 << 20},
		{name: "readbuf64k-64k", tune: func(c *yamux.Transport) { c.ReadBufSize = 64 << 10 }, write: 64 << 10},
		{name: "window64m-256k", tune: func(c *yamux.Transport) { c.MaxStreamWindowSize = 64 << 20 }, write: 256 << 10},
	} {
		b.Run(v.name, func(b *testing.B) {
			mk := func() host.Host {
				cfg := *yamux.DefaultTransport
				if v.tune != nil {
					v.tune(&cfg)
				}
				h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.Transport(tcp.NewTCPTransport),
					libp2p.Muxer(yamux.ID, &cfg), libp2p.DisableRelay())
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { h.Close() })
				return h
			}
			src, dst := mk(), mk()
			src.SetStreamHandler("/bulk-test", func(s network.Stream) {
				defer s.Close()
				buf := make([]byte, v.write)
				for left := size; left > 0; left -= len(buf) {
					if _, err := s.Write(buf[:min(len(buf), left)]); err != nil {
						s.Reset()
						return
					}
				}
			})
			if err := dst.Connect(context.Background(), peer.AddrInfo{ID: src.ID(), Addrs: src.Addrs()}); err != nil {
				b.Fatal(err)
			}
			cpu0 := processCPU()
			for b.Loop() {
				s, err := dst.NewStream(context.Background(), src.ID(), "/bulk-test")
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, v.write)
				n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{s}, buf)
				s.Close()
				if err != nil || n != size {
					b.Fatal(fmt.Errorf("%d of %d bytes: %v", n, size, err))
				}
			}
			b.SetBytes(size)
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N*size>>20), "cpu-µs/MiB")
		})
	}
}
