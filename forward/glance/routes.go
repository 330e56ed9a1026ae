// Package glance puts OpenStack Glance (the image service) behind cheops
// agents: one Glance per site, the openstack CLI unchanged. It implements
// forward.Routes for Glance's v2 API: where images are in request paths
// (/v2/images, /v2/images/{id}, /v2/images/{id}/file,
// /v2/images/{id}/tags/{tag}), their ids as names the client may choose,
// lists merged across sites ({"images": [...]}, each image tagged with its
// site), and the copy of an image's metadata to another site.
//
// An image's id is the same on every site: Glance takes a client-chosen
// UUID on create, and a create that carries none is given one by the
// agent before it is sent anywhere (Routes.Assign), so no body is ever
// rewritten afterwards and the catalog records the image under its path
// (/v2/images/{id}) on every site of its scope, as it does Kubernetes
// objects under theirs.
//
// Image data is not catalog data: an upload (PUT /v2/images/{id}/file)
// never goes through the forwarder's write path, whose operations and
// bodies the catalog keeps. Data streams the upload to the image's
// replicas at once (see data.go).
//
// See docs/openstack.md for the agent flags, the openstack CLI through a
// named scope, and the figures.
package glance

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"cheops/forward"
)

// SiteField tags each image of a merged list with the site (cheops site)
// whose Glance answered it. Glance shows unknown top-level keys of an
// image as properties, so the openstack CLI prints it with --long.
const SiteField = "cheops_site"

// Images is the collection of images in Glance's v2 API.
const Images = "/v2/images"

// Routes is forward.Routes (and forward.Namer) for Glance's v2 API. The
// zero value is ready to use.
type Routes struct{}

var (
	_ forward.Routes = Routes{}
	_ forward.Namer  = Routes{}
)

// Route splits a Glance path:
//
//	/v2/images                       the collection
//	/v2/images/{id}                  an image
//	/v2/images/{id}/file             its data
//	/v2/images/{id}/tags/{tag}       one of its tags
//	/v2/images/{id}/import, /stage   other subresources
//
// Everything else (/, /versions, /v2/schemas/…, /v2/info/…, /v2/tasks,
// /v2/metadefs/…) is no resource: passed through to one site.
func (Routes) Route(path string) forward.Route {
	// The forwarder passes the path without its leading slash.
	rest, ok := strings.CutPrefix("/"+strings.Trim(path, "/"), Images)
	if !ok || (rest != "" && rest[0] != '/') {
		return forward.Route{}
	}
	r := forward.Route{Collection: Images}
	if rest == "" {
		return r
	}
	id, sub, _ := strings.Cut(rest[1:], "/")
	if id == "" {
		return forward.Route{}
	}
	r.ID = id
	if sub != "" {
		r.Rest = "/" + sub
	}
	return r
}

// image is the part of an image this package reads.
type image struct {
	ID string `json:"id"`
}

// Name reads the image's id from a create's body or its answer; false
// when it has none.
func (Routes) Name(body []byte) (string, bool) {
	var im image
	if json.Unmarshal(body, &im) != nil || im.ID == "" {
		return "", false
	}
	return im.ID, true
}

// ErrNotImage is returned for a body that is not a JSON object.
var ErrNotImage = errors.New("glance: not an image")

// Assign gives a create without an id a random UUID (version 4, as Glance
// makes them), so that every site stores the image under one id. A body
// that is not a JSON object is left alone (Glance will refuse it).
func (Routes) Assign(body []byte) ([]byte, string, error) {
	var im map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&im); err != nil || im == nil {
		return body, "", fmt.Errorf("%w: %v", ErrNotImage, err)
	}
	if id, ok := im["id"].(string); ok && id != "" {
		return body, id, nil
	}
	id, err := newUUID()
	if err != nil {
		return body, "", err
	}
	im["id"] = id
	out, err := json.Marshal(im)
	return out, id, err
}

// newUUID returns a random version 4 UUID.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("glance: uuid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

// Stream reports no watch-like answers: Glance has none. Image data
// (GET /v2/images/{id}/file) is streamed all the same: the forwarder
// passes a client-named service's reads on as they arrive, from one
// holder, whatever their size.
func (Routes) Stream(*http.Request) bool { return false }

// ErrNotMergeable is returned by Merge for answers that are not image
// lists.
var ErrNotMergeable = errors.New("glance: answer is not an image list")

// Merge joins the image lists of several sites: one entry per image per
// site, each tagged with SiteField. The merged list has no "next" link:
// it is the union at one moment, not a page of any site's list.
func (Routes) Merge(_ *http.Request, answers []forward.SiteAnswer) ([]byte, string, error) {
	var out map[string]any
	images := []any{}
	for _, a := range answers {
		var doc map[string]any
		dec := json.NewDecoder(bytes.NewReader(a.Body))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			return nil, "", fmt.Errorf("%w: %s: %v", ErrNotMergeable, a.Site, err)
		}
		list, ok := doc["images"].([]any)
		if !ok && doc["images"] != nil {
			return nil, "", fmt.Errorf("%w: %s: images is %T", ErrNotMergeable, a.Site, doc["images"])
		}
		if _, has := doc["images"]; !has {
			return nil, "", fmt.Errorf("%w: %s answered no images", ErrNotMergeable, a.Site)
		}
		if out == nil {
			out = doc
		}
		for _, it := range list {
			if m, ok := it.(map[string]any); ok {
				m[SiteField] = a.Site
			}
			images = append(images, it)
		}
	}
	delete(out, "next")
	out["images"] = images
	body, err := json.Marshal(out)
	return body, "application/json", err
}

// serverFields are what Glance sets on an image and a create must not
// carry (Glance refuses most of them as read-only).
var serverFields = []string{"status", "created_at", "updated_at", "checksum", "size", "virtual_size",
	"file", "self", "schema", "locations", "direct_url", "os_hash_algo", "os_hash_value", "owner",
	"stores", SiteField}

// Copy turns one site's image, as a GET answered it, into the create of
// the same image (same id, name, formats, properties, tags) on another
// site. Its data is not part of it: it is uploaded separately.
func (Routes) Copy(body []byte) ([]byte, error) {
	var im map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&im); err != nil {
		return nil, fmt.Errorf("glance: copy: %w", err)
	}
	for _, f := range serverFields {
		delete(im, f)
	}
	return json.Marshal(im)
}
