package agent

import (
	"context"
	"net/http"
	"testing"
)

func TestAPIToken(t *testing.T) {
	dirs, trust := identities(t, "paris")
	cfg := testConfig("paris", dirs["paris"], trust)
	cfg.APIToken = "s3cret"
	a, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, tc := range []struct {
		path, header string
		want         int
	}{
		{"/v1/health", "", 200},
		{"/v1/sites", "", 401},
		{"/v1/sites", "Bearer wrong", 401},
		{"/v1/sites", "Bearer s3cret", 200},
		{"/v1/sites?token=s3cret", "", 200},
		{"/v1/resources", "", 401},
		{"/svc/posts/posts", "", 401},
		{"/metrics", "", 401},
	} {
		req, _ := http.NewRequest("GET", a.URL()+tc.path, nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s (%q): %d, want %d", tc.path, tc.header, resp.StatusCode, tc.want)
		}
	}
}
