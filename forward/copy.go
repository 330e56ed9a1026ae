package forward

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"cheops/catalog"
	"cheops/scope"
)

// itemPath is the path of a resource's copy in a site's application,
// from its collection and its local id there.
func (s Service) itemPath(collection, local string) string {
	if s.Routes != nil {
		return local // a client-named item's local id is its path
	}
	return collection + "/" + local
}

// readCopy reads this site's copy of a resource and returns the body that
// creates it on another site's application (without its local id).
func (f *Forwarder) readCopy(ctx context.Context, svc Service, collection, local string) ([]byte, error) {
	ans, err := f.Call(ctx, svc.Name, http.MethodGet, svc.itemPath(collection, local), nil, nil)
	if err != nil || ans.Status != http.StatusOK {
		return nil, fmt.Errorf("read %s here: %d %v", local, ans.Status, err)
	}
	if svc.Routes != nil {
		return svc.Routes.Copy(ans.Body)
	}
	var state map[string]any
	if err := json.Unmarshal(ans.Body, &state); err != nil {
		return nil, fmt.Errorf("the copy of %s is not a JSON object: %w", local, err)
	}
	delete(state, svc.IDField)
	body, err := json.Marshal(state)
	if err != nil {
		return nil, fmt.Errorf("the copy of %s: %w", local, err)
	}
	return body, nil
}

// copyTo reads this site's copy of an item the catalog does not know and
// creates it on site's application (attachContents). It returns the item's
// local id there, and whether a client-named item was there already (409:
// nothing was written).
func (f *Forwarder) copyTo(ctx context.Context, svc Service, collection, local, site string) (string, []byte, bool, error) {
	copyBody, err := f.readCopy(ctx, svc, collection, local)
	if err != nil {
		return "", nil, false, err
	}
	r, _ := http.NewRequestWithContext(ctx, http.MethodPost, "/", nil)
	r.Header.Set("Content-Type", "application/json")
	req := &request{r: r, svc: svc, body: copyBody, scope: siteScope(site)}
	out := f.execute(ctx, site, req, http.MethodPost, collection, nil)
	if svc.Routes != nil && out.err == nil && out.status == http.StatusConflict {
		return local, copyBody, true, nil
	}
	if !out.ok() {
		return "", nil, false, fmt.Errorf("create the copy on %s: %d %v", site, out.status, out.err)
	}
	if svc.Routes != nil {
		return local, copyBody, false, nil
	}
	newLocal, ok := localID(out.body, svc.IDField)
	if !ok {
		return "", nil, false, fmt.Errorf("%s's application answered without an id", site)
	}
	return newLocal, copyBody, false, nil
}

// siteScope is the scope of one site.
func siteScope(site string) *scope.Scope {
	return &scope.Scope{Bindings: []scope.Binding{{Expr: scope.Site{Name: site}}}}
}

// attachContents copies to site what a resource holds (a Kubernetes
// namespace's configmaps and deployments, see Container): an item the
// catalog knows is attached to site like its container; one it does not
// know is copied and recorded as a resource replicated on this site and
// site. An item site holds already and the catalog does not know is left
// alone.
func (f *Forwarder) attachContents(ctx context.Context, svc Service, res catalog.Resource, local, site string) error {
	c, ok := svc.Routes.(Container)
	if !ok {
		return nil
	}
	self := f.cfg.Membership.Site()
	parent := svc.routeOf(local)
	for _, coll := range c.Contents(Route{Collection: parent.collection, ID: parent.id, Rest: parent.rest}) {
		ans, err := f.Call(ctx, svc.Name, http.MethodGet, coll, nil, nil)
		if err != nil || ans.Status != http.StatusOK {
			return fmt.Errorf("list %s here: %d %v", coll, ans.Status, err)
		}
		names, err := c.Items(ans.Body)
		if err != nil {
			return err
		}
		for _, name := range names {
			key := Route{Collection: coll, ID: name}.Key()
			if id, known := f.cfg.Catalog.LookupLocal(svc.Name, self, key); known {
				item, err := f.cfg.Catalog.Get(ctx, id)
				if err != nil || slices.Contains(item.Sites, site) {
					continue
				}
				if _, err := f.Attach(ctx, id, site); err != nil {
					return err
				}
				continue
			}
			_, copyBody, existed, err := f.copyTo(ctx, svc, coll, key, site)
			if err != nil {
				return err
			}
			if existed {
				continue
			}
			sites := []string{self, site}
			id := catalog.NewID(time.Now())
			sc := &scope.Scope{Bindings: []scope.Binding{{Service: svc.Name, Expr: scope.All{Terms: []scope.Expr{scope.Site{Name: self}, scope.Site{Name: site}}}}}}
			meta := catalog.Meta{ID: id, Service: svc.Name, Scope: sc.String(), Sites: sites, Collection: coll,
				LocalIDs: map[string]string{self: key, site: key}}
			op := catalog.Operation{ID: catalog.NewID(time.Now()), Method: http.MethodPost, Path: coll, Body: copyBody,
				Targets: sites, Outcomes: map[string]string{self: "200", site: "201"}}
			if err := f.cfg.Catalog.Create(ctx, meta, op); err != nil {
				return fmt.Errorf("record %s: %w", key, err)
			}
		}
	}
	return nil
}
