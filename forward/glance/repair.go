package glance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"cheops/errcode"
)

// DefaultRepairInterval is how often a site looks for images its Glance
// holds without data while another replica has it. 5 s: a returning
// site's Glance gets its images' data a few seconds after its agent
// replays their creates, and one local list of queued images every 5 s
// costs Glance nothing that matters.
const DefaultRepairInterval = 5 * time.Second

// Design note — a replica that missed an upload fetches the data from a
// holder, never from the catalog. An upload is streamed to the replicas
// reachable at that moment (data.go); one that was away gets the image's
// create from the catalog when it returns (an ordinary operation), and
// its Glance then holds the image "queued", without data. Repair finds
// such images (queued here, tracked by the catalog) and, for each, asks
// the image's other replicas through their agents (DataProtocol, member
// sites only) for the image; from the first that has it "active" it
// streams the data into this site's Glance. Glance computes the checksum
// again from the bytes: the replicas end with identical checksums.

// image fields Repair reads.
type imageStatus struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Checksum string `json:"checksum"`
}

// RepairOnce fetches, from another replica, the data of every image this
// site's Glance holds queued while another replica holds it active. It
// returns how many images it repaired.
func (d *Data) RepairOnce(ctx context.Context) (int, error) {
	queued, err := d.localQueued(ctx)
	if err != nil {
		return 0, err
	}
	self := d.cfg.Membership.Site()
	repaired := 0
	var errs []error
	for _, id := range queued {
		sites, known, err := d.replicas(ctx, id)
		if err != nil || !known {
			continue // not tracked by cheops: not ours to repair
		}
		for _, s := range sites {
			p, ok := d.cfg.Membership.PeerOf(s)
			if s == self || !ok {
				continue
			}
			done, err := d.repairFrom(ctx, p, id)
			if err != nil {
				errs = append(errs, fmt.Errorf("image %s from %s: %w", id, s, err))
				continue
			}
			if done {
				d.log.Info("image data fetched from a replica", "image", id, "from", s)
				repaired++
				break
			}
		}
	}
	return repaired, errors.Join(errs...)
}

// localQueued lists the images this site's Glance holds without data.
func (d *Data) localQueued(ctx context.Context) ([]string, error) {
	u := d.cfg.URL.JoinPath(Images)
	u.RawQuery = url.Values{"status": {"queued"}, "limit": {"1000"}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("glance: list queued images: %w", err)
	}
	defer resp.Body.Close()
	var list struct {
		Images []imageStatus `json:"images"`
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("glance: list queued images: status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("glance: list queued images: %w", err)
	}
	var ids []string
	for _, im := range list.Images {
		if im.Status == "queued" {
			ids = append(ids, im.ID)
		}
	}
	return ids, nil
}

// repairFrom streams an image's data from the replica at p into this
// site's Glance when p's copy is active; false when it is not.
func (d *Data) repairFrom(ctx context.Context, p peer.ID, id string) (bool, error) {
	resp, s, err := d.read(ctx, p, Images+"/"+url.PathEscape(id))
	if err != nil {
		return false, err
	}
	var im imageStatus
	err = json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(&im)
	s.Close()
	if err != nil || resp.StatusCode != http.StatusOK || im.Status != "active" {
		return false, nil
	}
	resp, s, err = d.read(ctx, p, Images+"/"+url.PathEscape(id)+"/file")
	if err != nil {
		return false, err
	}
	defer s.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("read the data: status %d", resp.StatusCode)
	}
	h := http.Header{"Content-Type": {"application/octet-stream"}}
	o := d.sendLocal(ctx, id, PartFile, h, resp.ContentLength, resp.Body)
	switch {
	case o.err != nil:
		return false, o.err
	case !o.ok():
		return false, fmt.Errorf("upload here: status %d: %s", o.status, o.body)
	}
	return true, nil
}

// read sends a GET of path (inside Glance's API) to the agent at p; the
// caller reads the answer's body, then closes the stream.
func (d *Data) read(ctx context.Context, p peer.ID, path string) (*http.Response, network.Stream, error) {
	s, err := d.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "glance-data"), p, DataProtocol)
	if err != nil {
		return nil, nil, fmt.Errorf("glance: open a data stream: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://cheops"+path, nil)
	if err != nil {
		s.Reset()
		return nil, nil, err
	}
	if err := req.Write(s); err != nil {
		s.Reset()
		return nil, nil, fmt.Errorf("glance: send a read: %w", err)
	}
	_ = s.CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReaderSize(s, chunk), req)
	if err != nil {
		s.Reset()
		return nil, nil, fmt.Errorf("glance: read the answer: %w", err)
	}
	return resp, s, nil
}

// serveRead answers another member site's GET of an image or its data
// from this site's Glance, the data streamed as it comes.
func (d *Data) serveRead(s network.Stream, req *http.Request) {
	path := req.URL.EscapedPath()
	r := (Routes{}).Route(path)
	if r.ID == "" || (r.Rest != "" && r.Rest != "/file") {
		resp := &http.Response{StatusCode: http.StatusBadRequest, ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(errorBody("bad_input", "not an image read")))}
		_ = resp.Write(s)
		return
	}
	u := d.cfg.URL.JoinPath(Images, r.ID)
	if r.Rest != "" {
		u = u.JoinPath("file")
	}
	out, err := http.NewRequestWithContext(context.Background(), http.MethodGet, u.String(), nil)
	if err != nil {
		s.Reset()
		return
	}
	resp, err := d.client.Do(out)
	if err != nil {
		resp = &http.Response{StatusCode: http.StatusBadGateway, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(errorBody(errcode.SiteFailed, err.Error())))}
	}
	defer resp.Body.Close()
	resp.ProtoMajor, resp.ProtoMinor = 1, 1
	bw := bufio.NewWriterSize(s, chunk)
	if resp.Write(bw) == nil {
		_ = bw.Flush()
	}
}

// repairLoop runs RepairOnce every interval until ctx ends.
func (d *Data) repairLoop(ctx context.Context, interval time.Duration) {
	defer close(d.repairDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := d.RepairOnce(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn("image data repair", "err", err)
			}
		}
	}
}
