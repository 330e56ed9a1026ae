package glance

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"cheops/catalog"
	"cheops/errcode"
	"cheops/scope"
)

// DataProtocol is the libp2p protocol over which an agent streams image
// data to another agent's Glance: one HTTP/1.1 PUT of
// /v2/images/{id}/file (or /stage) per stream, its body streamed, then
// the answer.
// Only member sites may open it; the sender streams an upload only to
// sites its catalog lists among the image's replicas.
const DataProtocol = protocol.ID("/cheops/glance-data/1.0.0")

// Headers of an upload's answer (as the forwarder's: forward.HeaderSite,
// forward.HeaderSites).
const (
	headerSite  = "X-Cheops-Site"
	headerSites = "X-Cheops-Sites"
)

// Membership is what Data needs to know of the sites. *node.Node
// implements it.
type Membership interface {
	Site() string
	PeerOf(site string) (peer.ID, bool)
	SiteOf(p peer.ID) (string, bool)
}

// Catalog is what Data reads of the catalog. *catalog.Catalog implements
// it.
type Catalog interface {
	LookupLocal(service, site, localID string) (string, bool)
	Get(ctx context.Context, id string) (catalog.Resource, error)
}

// DataConfig describes the image-data path of one Glance service.
type DataConfig struct {
	// Service is the service's name (/svc/{Service}/…).
	Service string
	// URL is this site's Glance.
	URL *url.URL
	// Host opens and serves DataProtocol streams.
	Host       host.Host
	Membership Membership
	Catalog    Catalog
	// Next serves every request that is no upload (the forwarder).
	Next http.Handler
	// Client calls this site's Glance; nil: a client without a timeout
	// (an upload takes as long as its data does; the client's request
	// bounds it), with TLS.
	Client *http.Client
	// TLS is the TLS configuration of an HTTPS Glance (the service's
	// --service-ca, forward.UpstreamTLS) for the client NewData makes;
	// nil: the system's roots.
	TLS *tls.Config
	// RepairInterval is how often this site fetches, from another
	// replica, the data of images its Glance holds without
	// (DefaultRepairInterval when 0; negative: never, tests call
	// RepairOnce).
	RepairInterval time.Duration
	Logger         *slog.Logger
}

// Data serves image uploads (PUT /v2/images/{id}/file, and the staging
// of an import, PUT /v2/images/{id}/stage, in every path form the agent
// takes: /svc/…, /scope/…/svc/…) and passes every other request to Next.
//
// Design note — image data is not catalog data. An upload is streamed to
// every replica of the image that is reachable, at once, while it
// arrives: never buffered whole, never journaled, never written to the
// catalog or its operation log (whose bodies every member replicates and
// keeps). Agent memory stays flat whatever the image's size. A replica
// that cannot be reached is reported in X-Cheops-Sites and fetches the
// data from a holder when it is back (repair.go).
type Data struct {
	cfg        DataConfig
	log        *slog.Logger
	client     *http.Client
	stop       context.CancelFunc
	repairDone chan struct{}
}

// NewData starts serving DataProtocol streams for the service.
func NewData(cfg DataConfig) (*Data, error) {
	if cfg.Service == "" || cfg.URL == nil || cfg.Host == nil || cfg.Membership == nil || cfg.Catalog == nil || cfg.Next == nil {
		return nil, errors.New("glance: data: service, URL, host, membership, catalog and next are required")
	}
	d := &Data{cfg: cfg, log: cfg.Logger, client: cfg.Client}
	if d.log == nil {
		d.log = slog.Default()
	}
	d.log = d.log.With("component", "glance-data", "service", cfg.Service, "site", cfg.Membership.Site())
	if d.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.WriteBufferSize, tr.ReadBufferSize = chunk, chunk
		if cfg.TLS != nil {
			tr.TLSClientConfig = cfg.TLS.Clone()
		}
		d.client = &http.Client{Transport: tr}
	}
	cfg.Host.SetStreamHandler(DataProtocol, d.serveStream)
	ctx, stop := context.WithCancel(context.Background())
	d.stop, d.repairDone = stop, make(chan struct{})
	interval := cfg.RepairInterval
	if interval == 0 {
		interval = DefaultRepairInterval
	}
	if interval > 0 {
		go d.repairLoop(ctx, interval)
	} else {
		close(d.repairDone)
	}
	return d, nil
}

// Close stops serving other sites and repairing, and waits for the
// repair in progress.
func (d *Data) Close() {
	d.cfg.Host.RemoveStreamHandler(DataProtocol)
	d.stop()
	<-d.repairDone
}

// The parts of an image that carry its data: what an upload PUTs.
const (
	// PartFile is the image's data (PUT /v2/images/{id}/file, `image
	// create --file`).
	PartFile = "file"
	// PartStage is the data of an interoperable import (PUT
	// /v2/images/{id}/stage, `image create --import --file`), staged on
	// each replica, which its own glance-direct import then takes.
	PartStage = "stage"
)

// UploadImage returns the image id and the part (PartFile, PartStage) of
// an upload's path inside the agent's API
// (/svc/{service}/v2/images/{id}/{part}, optionally after
// /scope/{scope}); false for any other path. A pure function.
func UploadImage(service, escapedPath string) (id, part string, ok bool) {
	p := escapedPath
	if rest, ok := strings.CutPrefix(p, "/scope/"); ok {
		_, after, found := strings.Cut(rest, "/")
		if !found {
			return "", "", false
		}
		p = "/" + after
	}
	rest, found := strings.CutPrefix(p, "/svc/"+service+Images+"/")
	if !found {
		return "", "", false
	}
	id, part, ok = strings.Cut(rest, "/")
	if !ok || id == "" || (part != PartFile && part != PartStage) {
		return "", "", false
	}
	id, err := url.PathUnescape(id)
	if err != nil || id == "" {
		return "", "", false
	}
	return id, part, true
}

// ServeHTTP streams an upload to the image's replicas; anything else goes
// to Next.
func (d *Data) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, part, ok := UploadImage(d.cfg.Service, r.URL.EscapedPath())
	if !ok || r.Method != http.MethodPut {
		d.cfg.Next.ServeHTTP(w, r)
		return
	}
	d.upload(w, r, id, part)
}

// outcome is one replica's answer to an upload.
type outcome struct {
	site   string
	status int
	header http.Header
	body   []byte
	err    error
}

func (o outcome) ok() bool { return o.err == nil && o.status >= 200 && o.status < 300 }

func (o outcome) text() string {
	if o.err != nil {
		return "failed"
	}
	return fmt.Sprint(o.status)
}

// replicas returns the sites that hold the image, this one first when it
// does; false when this site's catalog does not know it.
func (d *Data) replicas(ctx context.Context, id string) ([]string, bool, error) {
	self := d.cfg.Membership.Site()
	rid, ok := d.cfg.Catalog.LookupLocal(d.cfg.Service, self, Images+"/"+id)
	if !ok {
		return nil, false, nil
	}
	res, err := d.cfg.Catalog.Get(ctx, rid)
	if err != nil {
		return nil, false, fmt.Errorf("glance: image %s: %w", id, err)
	}
	var sites []string
	for _, s := range res.Sites {
		if v := res.PerSite[s]; v.Status == catalog.StatusDeleted || v.Status == catalog.StatusFailed {
			continue
		}
		sites = append(sites, s)
	}
	sort.SliceStable(sites, func(i, j int) bool { return sites[i] == self && sites[j] != self })
	return sites, true, nil
}

// upload streams the request's body to the part of the image on every
// reachable replica at once.
func (d *Data) upload(w http.ResponseWriter, r *http.Request, id, part string) {
	ctx := r.Context()
	sites, known, err := d.replicas(ctx, id)
	switch {
	case err != nil:
		errcode.Write(w, http.StatusInternalServerError, "internal", err.Error())
		return
	case !known:
		d.relay(w, r, id, part)
		return
	}
	header := appHeader(r.Header)
	status, h, body := d.fanOut(ctx, sites, id, part, header, r.ContentLength, r.Body)
	for k, v := range h {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// appHeader is the client's header without cheops' own.
func appHeader(in http.Header) http.Header {
	header := in.Clone()
	for k := range header {
		if strings.HasPrefix(strings.ToLower(k), "x-cheops-") {
			header.Del(k)
		}
	}
	return header
}

// headerRelay asks the receiving agent of a data stream to stream the
// upload to every replica its catalog lists, not to its Glance alone.
const headerRelay = "X-Cheops-Relay"

// relay hands an upload of an image this site's catalog does not know
// to an agent of a site the request's scope names for the service (the
// first reachable, in the scope's order), which streams it to the
// image's replicas.
func (d *Data) relay(w http.ResponseWriter, r *http.Request, id, part string) {
	self := d.cfg.Membership.Site()
	notHere := fmt.Sprintf("image %s is not in site %s's catalog", id, self)
	text := r.Header.Get(headerScope)
	if text == "" {
		text = pathScope(r.URL.EscapedPath())
	}
	if text == "" {
		errcode.Write(w, http.StatusNotFound, "unknown_resource", notHere+", and the request has no scope to find a site that holds it")
		return
	}
	sc, err := scope.Parse(text)
	if err != nil {
		errcode.Write(w, http.StatusBadRequest, "bad_scope", err.Error())
		return
	}
	e, ok := sc.For(d.cfg.Service)
	if !ok {
		errcode.Write(w, http.StatusBadRequest, "unbound_service", fmt.Sprintf("the scope %s does not place %s", sc, d.cfg.Service))
		return
	}
	for _, s := range scope.Sites(e) {
		p, ok := d.cfg.Membership.PeerOf(s)
		if s == self || !ok {
			continue
		}
		header := appHeader(r.Header)
		header.Set(headerRelay, "1")
		o := d.sendRemote(r.Context(), p, id, part, header, r.ContentLength, r.Body)
		if o.err != nil {
			errcode.Write(w, http.StatusBadGateway, errcode.SiteFailed, fmt.Sprintf("relay the upload to %s: %v", s, o.err))
			return
		}
		for k, v := range o.header {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(o.status)
		_, _ = w.Write(o.body)
		return
	}
	errcode.Write(w, http.StatusServiceUnavailable, errcode.Unreachable, notHere+", and no other site of "+sc.String()+" can be reached")
}

// headerScope is forward.HeaderScope.
const headerScope = "X-Cheops-Scope"

// pathScope is the scope of a /scope/{scope}/… path, "" for another path.
func pathScope(escaped string) string {
	rest, ok := strings.CutPrefix(escaped, "/scope/")
	if !ok {
		return ""
	}
	enc, _, _ := strings.Cut(rest, "/")
	s, err := url.PathUnescape(enc)
	if err != nil {
		return ""
	}
	return s
}

// fanOut streams body to every site of sites that can be reached, at
// once, and returns the answer to give: the first replica's answer that
// succeeded (this site's first) with every replica's outcome in
// X-Cheops-Sites.
func (d *Data) fanOut(ctx context.Context, sites []string, id, part string, header http.Header, length int64, in io.Reader) (int, http.Header, []byte) {
	type dest struct {
		site string
		pw   *io.PipeWriter
		dead bool
	}
	var dests []*dest
	results := make(chan outcome, len(sites))
	var wg sync.WaitGroup
	for _, s := range sites {
		send := d.sendLocal
		if s != d.cfg.Membership.Site() {
			p, ok := d.cfg.Membership.PeerOf(s)
			if !ok {
				results <- outcome{site: s, err: fmt.Errorf("site %s: no peer", s)}
				continue
			}
			send = func(ctx context.Context, id, part string, h http.Header, n int64, body io.Reader) outcome {
				return d.sendRemote(ctx, p, id, part, h, n, body)
			}
		}
		pr, pw := io.Pipe()
		dests = append(dests, &dest{site: s, pw: pw})
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := send(ctx, id, part, header.Clone(), length, pr)
			o.site = s
			// A replica that answered (or failed) reads no more: the
			// writer below drops it instead of blocking.
			pr.CloseWithError(errReplicaDone)
			results <- o
		}()
	}
	// Copy the client's body to every live replica, chunk by chunk: the
	// slowest replica paces the upload, and memory stays one buffer.
	buf := make([]byte, 256<<10)
	var readErr error
	for {
		n, err := in.Read(buf)
		if n > 0 {
			live := 0
			for _, dst := range dests {
				if dst.dead {
					continue
				}
				if _, werr := dst.pw.Write(buf[:n]); werr != nil {
					dst.dead = true
					continue
				}
				live++
			}
			if live == 0 && len(dests) > 0 {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				readErr = err
			}
			break
		}
	}
	for _, dst := range dests {
		if readErr != nil {
			dst.pw.CloseWithError(readErr)
		} else {
			dst.pw.Close()
		}
	}
	wg.Wait()
	close(results)
	out := map[string]outcome{}
	for o := range results {
		out[o.site] = o
	}
	return d.answer(sites, out, readErr)
}

var errReplicaDone = errors.New("glance: the replica stopped reading")

// answer is the answer to an upload: the first replica's answer that
// succeeded (this site's first) with every replica's outcome in
// X-Cheops-Sites.
func (d *Data) answer(sites []string, out map[string]outcome, readErr error) (int, http.Header, []byte) {
	parts := make([]string, 0, len(sites))
	var best, failed *outcome
	for _, s := range sites {
		o := out[s]
		parts = append(parts, s+"="+o.text())
		if o.err != nil {
			d.log.Warn("image data not delivered", "to", s, "err", o.err)
		}
		switch {
		case o.ok() && best == nil:
			best = &o
		case !o.ok() && failed == nil:
			failed = &o
		}
	}
	sort.Strings(parts)
	h := http.Header{headerSites: {strings.Join(parts, ", ")}}
	fail := func(status int, code, msg string) (int, http.Header, []byte) {
		h.Set("Content-Type", "application/json")
		return status, h, []byte(errorBody(code, msg) + "\n")
	}
	if readErr != nil {
		return fail(http.StatusBadRequest, "bad_body", fmt.Sprintf("read the image data: %v", readErr))
	}
	if best == nil {
		best = failed
	}
	if best == nil || best.err != nil {
		msg := "no replica of the image could be reached"
		if best != nil {
			msg = best.err.Error()
		}
		return fail(http.StatusBadGateway, errcode.SiteFailed, msg)
	}
	for k, v := range best.header {
		if k != "Content-Length" {
			h[k] = v
		}
	}
	h.Set(headerSite, best.site)
	return best.status, h, best.body
}

// maxAnswer bounds the answer of a Glance to an upload (an error message
// at most).
const maxAnswer = 1 << 20

// sendLocal PUTs the data to the image's part on this site's Glance.
func (d *Data) sendLocal(ctx context.Context, id, part string, h http.Header, n int64, body io.Reader) outcome {
	u := d.cfg.URL.JoinPath(Images, id, part)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), body)
	if err != nil {
		return outcome{err: err}
	}
	req.Header = h
	req.ContentLength = n
	resp, err := d.client.Do(req)
	if err != nil {
		return outcome{err: fmt.Errorf("glance: upload: %w", err)}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	return outcome{status: resp.StatusCode, header: resp.Header, body: data}
}

// sendRemote streams the data to the image's part at another site's
// agent over DataProtocol.
func (d *Data) sendRemote(ctx context.Context, p peer.ID, id, part string, h http.Header, n int64, body io.Reader) outcome {
	s, err := d.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "glance-data"), p, DataProtocol)
	if err != nil {
		return outcome{err: fmt.Errorf("glance: open a data stream: %w", err)}
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	defer s.Close()
	req, err := http.NewRequest(http.MethodPut, "http://cheops"+Images+"/"+url.PathEscape(id)+"/"+part, body)
	if err != nil {
		return outcome{err: err}
	}
	req.Header = h
	req.ContentLength = n
	bw := bufio.NewWriterSize(s, chunk) // Request.Write would wrap s in 4 KiB
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		s.Reset()
		return outcome{err: fmt.Errorf("glance: send the data: %w", err)}
	}
	if err := s.CloseWrite(); err != nil {
		return outcome{err: fmt.Errorf("glance: send the data: %w", err)}
	}
	resp, err := http.ReadResponse(bufio.NewReader(s), req)
	if err != nil {
		return outcome{err: fmt.Errorf("glance: read the answer: %w", err)}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	return outcome{status: resp.StatusCode, header: resp.Header, body: data}
}

// chunk is the size of the writes and reads image data crosses a
// stream or a connection in: one yamux frame of 64 KiB, not net/http's
// default of 4 KiB (sixteen frames, each encrypted and sent on its own).
const chunk = 64 << 10

// streamIdle bounds the wait for the first bytes of a data stream.
const streamIdle = 30 * time.Second

// serveStream receives an upload from another member site and streams it
// to this site's Glance.
func (d *Data) serveStream(s network.Stream) {
	defer s.Close()
	site, ok := d.cfg.Membership.SiteOf(s.Conn().RemotePeer())
	if !ok {
		d.log.Warn("refused image data from a peer that is not a member site", "peer", s.Conn().RemotePeer())
		s.Reset()
		return
	}
	_ = s.SetReadDeadline(time.Now().Add(streamIdle))
	req, err := http.ReadRequest(bufio.NewReaderSize(s, chunk))
	if err != nil {
		d.log.Warn("malformed image data request", "from", site, "err", err)
		s.Reset()
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	if req.Method == http.MethodGet {
		d.serveRead(s, req)
		return
	}
	answer := func(status int, body string) {
		resp := &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body))}
		_ = resp.Write(s)
	}
	id, part, ok := UploadImage(d.cfg.Service, "/svc/"+d.cfg.Service+req.URL.EscapedPath())
	if !ok || req.Method != http.MethodPut {
		answer(http.StatusBadRequest, errorBody("bad_input", "not an image upload"))
		return
	}
	// The sender found the image in its catalog with this site among its
	// replicas, and this site's Glance has it since the create answered;
	// this site's catalog may not have the entry yet, so it is not asked.
	if req.Header.Get(headerRelay) != "" {
		// A site outside the image's replicas relays an upload: stream it
		// to the replicas this site's catalog lists.
		req.Header.Del(headerRelay)
		sites, known, err := d.replicas(context.Background(), id)
		if err != nil || !known {
			_, _ = io.Copy(io.Discard, req.Body)
			answer(http.StatusNotFound, errorBody("unknown_resource", fmt.Sprintf("image %s is not in site %s's catalog", id, d.cfg.Membership.Site())))
			return
		}
		status, h, body := d.fanOut(context.Background(), sites, id, part, req.Header, req.ContentLength, req.Body)
		_, _ = io.Copy(io.Discard, req.Body)
		h.Del("Content-Length")
		h.Del("Transfer-Encoding")
		resp := &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Header: h,
			Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
		_ = resp.Write(s)
		return
	}
	o := d.sendLocal(context.Background(), id, part, req.Header, req.ContentLength, req.Body)
	// Glance may answer before the data ends (an image that has data
	// already): read the rest, so that the sender is never left blocked
	// on a stream nobody reads.
	_, _ = io.Copy(io.Discard, req.Body)
	if o.err != nil {
		answer(http.StatusBadGateway, errorBody(errcode.SiteFailed, o.err.Error()))
		return
	}
	resp := &http.Response{StatusCode: o.status, ProtoMajor: 1, ProtoMinor: 1, Header: o.header,
		Body: io.NopCloser(bytes.NewReader(o.body)), ContentLength: int64(len(o.body))}
	resp.Header.Del("Content-Length")
	resp.Header.Del("Transfer-Encoding")
	_ = resp.Write(s)
}

// errorBody is an error in the API's format (errcode.Body), for answers
// written on a stream rather than through an http.ResponseWriter
// (errcode.Write).
func errorBody(code, msg string) string {
	b, _ := json.Marshal(errcode.Body{Error: msg, Code: code})
	return string(b)
}
