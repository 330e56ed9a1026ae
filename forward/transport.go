package forward

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Protocol carries HTTP requests between agents over libp2p streams.
const Protocol protocol.ID = "/cheops/forward/1.0.0"

// Headers of the forwarding protocol.
const (
	HeaderScope    = "X-Cheops-Scope"
	HeaderResource = "X-Cheops-Resource"
	HeaderSites    = "X-Cheops-Sites"
	HeaderSite     = "X-Cheops-Site"
	// HeaderHop marks a request that another agent sent: it runs on this
	// site only and is never forwarded again (loop prevention).
	HeaderHop = "X-Cheops-Hop"
	// HeaderCoordinate asks a member site to run a create as its
	// coordinator, when the site that received it is outside the scope.
	HeaderCoordinate = "X-Cheops-Coordinate"
)

// sendRemote runs req on another site's agent and returns its answer,
// with the body read (bounded by limit).
func (f *Forwarder) sendRemote(ctx context.Context, site string, req *http.Request, limit int64) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.SiteTimeout)
	defer cancel()
	s, resp, err := f.roundTrip(ctx, site, req.WithContext(ctx))
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	body, err := readBody(resp, limit)
	resp.Body.Close()
	if err != nil {
		s.Reset()
		return nil, nil, fmt.Errorf("site %s: %w", site, err)
	}
	return resp, body, nil
}

// serveStream executes a request another agent sent, on this site only.
func (f *Forwarder) serveStream(s network.Stream) {
	defer s.Close()
	remote := s.Conn().RemotePeer()
	site, ok := f.cfg.Membership.SiteOf(remote)
	if !ok {
		f.log.Warn("refused a forwarded request from a peer that is not a member site", "peer", remote)
		s.Reset()
		return
	}
	_ = s.SetDeadline(time.Now().Add(f.cfg.SiteTimeout))
	br := getReader(s) // a large body in large reads
	req, err := http.ReadRequest(br)
	if err != nil {
		f.log.Warn("malformed forwarded request", "from", site, "err", err)
		s.Reset()
		putReader(br)
		return
	}
	req.Body = http.MaxBytesReader(nil, req.Body, f.cfg.MaxBody)
	// The sender is the member site the stream's peer is bound to,
	// whatever its headers say.
	req.Header.Set(HeaderHop, site)
	req.RemoteAddr = site
	if req.Header.Get(headerStream) != "" {
		f.serveStreamed(s, req, br, site)
		return
	}
	hw := newHopWriter(s, req.Method)
	if isPlainHop(req) {
		// The request has arrived; its answer may take as long as the
		// requester reads it (an image of any size): the application's
		// timeout bounds the answer until its head, and the requester
		// resets the stream when its client goes away.
		_ = s.SetWriteDeadline(time.Time{})
		f.serveHop(hw, req.WithContext(context.Background()), site)
	} else {
		f.serve(hw, req.WithContext(context.Background()), site)
	}
	if err := hw.finish(); err != nil {
		s.Reset()
	}
	if req.ContentLength == 0 {
		// Nothing can read it any more (a body could still be read by
		// the transport that sent it on: that reader is left to the GC).
		putReader(br)
	}
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("answer larger than %d bytes", limit)
	}
	return b, nil
}
