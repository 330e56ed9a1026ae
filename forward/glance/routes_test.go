package glance

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"cheops/forward"
)

func TestRoute(t *testing.T) {
	for _, tc := range []struct {
		path string
		want forward.Route
	}{
		{"/v2/images", forward.Route{Collection: Images}},
		{"v2/images", forward.Route{Collection: Images}}, // as the forwarder passes it
		{"/v2/images/", forward.Route{Collection: Images}},
		{"/v2/images/8a1f", forward.Route{Collection: Images, ID: "8a1f"}},
		{"v2/images/8a1f/file", forward.Route{Collection: Images, ID: "8a1f", Rest: "/file"}},
		{"/v2/images/8a1f/tags/blue", forward.Route{Collection: Images, ID: "8a1f", Rest: "/tags/blue"}},
		{"/v2/images/8a1f/import", forward.Route{Collection: Images, ID: "8a1f", Rest: "/import"}},
		{"/", forward.Route{}},
		{"", forward.Route{}},
		{"/versions", forward.Route{}},
		{"/v2/schemas/image", forward.Route{}},
		{"/v2/imagesx", forward.Route{}},
		{"/v2/info/stores", forward.Route{}},
	} {
		if got := (Routes{}).Route(tc.path); got != tc.want {
			t.Errorf("Route(%q) = %+v, want %+v", tc.path, got, tc.want)
		}
	}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestAssignAndName(t *testing.T) {
	r := Routes{}
	body, id, err := r.Assign([]byte(`{"name": "cirros", "disk_format": "raw", "min_ram": 512}`))
	if err != nil || !uuidRE.MatchString(id) {
		t.Fatalf("Assign: %q, %v", id, err)
	}
	if got, ok := r.Name(body); !ok || got != id {
		t.Fatalf("Name of the assigned body = %q, %v; want %q", got, ok, id)
	}
	if !strings.Contains(string(body), `"min_ram":512`) {
		t.Fatalf("numbers are kept as they were: %s", body)
	}
	_, id2, _ := r.Assign([]byte(`{"name": "cirros"}`))
	if id2 == id {
		t.Fatal("two creates got one id")
	}
	given := []byte(`{"id": "11111111-2222-4333-8444-555555555555", "name": "x"}`)
	if out, id, err := r.Assign(given); err != nil || id != "11111111-2222-4333-8444-555555555555" || string(out) != string(given) {
		t.Fatalf("a client's id is kept: %s %q %v", out, id, err)
	}
	if _, _, err := r.Assign([]byte(`[1]`)); err == nil {
		t.Fatal("a body that is no object is refused")
	}
	if _, ok := r.Name([]byte(`{"name": "x"}`)); ok {
		t.Fatal("a body without id has no name")
	}
}

func TestMerge(t *testing.T) {
	answers := []forward.SiteAnswer{
		{Site: "a", Body: []byte(`{"images": [{"id": "1", "name": "x"}, {"id": "2", "name": "y"}], "first": "/v2/images", "schema": "/v2/schemas/images", "next": "/v2/images?marker=2"}`)},
		{Site: "b", Body: []byte(`{"images": [{"id": "1", "name": "x"}], "first": "/v2/images", "schema": "/v2/schemas/images"}`)},
		{Site: "c", Body: []byte(`{"images": [], "first": "/v2/images", "schema": "/v2/schemas/images"}`)},
	}
	body, ct, err := Routes{}.Merge(nil, answers)
	if err != nil || ct != "application/json" {
		t.Fatal(ct, err)
	}
	var doc struct {
		Images []map[string]any `json:"images"`
		Next   *string          `json:"next"`
		Schema string           `json:"schema"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, im := range doc.Images {
		got = append(got, im["id"].(string)+"@"+im[SiteField].(string))
	}
	if strings.Join(got, " ") != "1@a 2@a 1@b" || doc.Next != nil || doc.Schema != "/v2/schemas/images" {
		t.Fatalf("merged: %s", body)
	}
	if _, _, err := (Routes{}).Merge(nil, []forward.SiteAnswer{{Site: "a", Body: []byte(`{"versions": []}`)}}); err == nil {
		t.Fatal("an answer that is no image list merged")
	}
}

func TestCopy(t *testing.T) {
	in := `{"id": "1", "name": "x", "status": "active", "checksum": "c", "size": 4, "file": "/v2/images/1/file", "self": "/v2/images/1",
		"schema": "/v2/schemas/image", "created_at": "t", "updated_at": "t", "owner": null, "tags": ["a"], "disk_format": "raw", "color": "blue", "cheops_site": "a"}`
	out, err := Routes{}.Copy([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(out, &m)
	if len(m) != 5 || m["id"] != "1" || m["name"] != "x" || m["disk_format"] != "raw" || m["color"] != "blue" || m["tags"] == nil {
		t.Fatalf("copy: %s", out)
	}
}

func TestUploadImage(t *testing.T) {
	for _, tc := range []struct {
		path, id, part string
		ok             bool
	}{
		{"/svc/glance/v2/images/8a1f/file", "8a1f", PartFile, true},
		{"/scope/%7Bglance:%20a%20&%20b%7D/svc/glance/v2/images/8a1f/file", "8a1f", PartFile, true},
		{"/svc/glance/v2/images/8a1f/stage", "8a1f", PartStage, true},
		{"/svc/glance/v2/images/8a1f", "", "", false},
		{"/svc/glance/v2/images/8a1f/import", "", "", false},
		{"/svc/glance/v2/images/8a1f/tags/file", "", "", false},
		{"/svc/glance/v2/images/8a1f/stage/x", "", "", false},
		{"/svc/glance/v2/images//file", "", "", false},
		{"/svc/other/v2/images/8a1f/file", "", "", false},
		{"/scope/x", "", "", false},
	} {
		if id, part, ok := UploadImage("glance", tc.path); id != tc.id || part != tc.part || ok != tc.ok {
			t.Errorf("UploadImage(%q) = %q, %q, %v; want %q, %q, %v", tc.path, id, part, ok, tc.id, tc.part, tc.ok)
		}
	}
}
