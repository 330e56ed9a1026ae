package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cheops/forward"
)

// chromium finds Debian's Chromium (installed by .ci/run).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
	return ""
}

// headless runs Chromium on a page with the flags this machine needs and
// stops it after four seconds, time for the page's scripts to fetch and
// render (a virtual-time budget never ends: the page keeps an event stream
// open).
func headless(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--timeout=4000", "--window-size=1200,800"}
	out, err := exec.CommandContext(ctx, bin, append(base, args...)...).Output()
	if err != nil {
		t.Fatalf("chromium %v: %v", args, err)
	}
	return out
}

// TestWebViewShowsSitesAndResources loads the agent's page in headless
// Chromium and checks that the rendered page lists the sites with their
// state and the resources with their replicas, and takes a screenshot.
func TestWebViewShowsSitesAndResources(t *testing.T) {
	bin := chromium(t)
	c := newCluster(t, "paris", "berlin", "rome")
	r := c.do("paris", "POST", "/svc/posts/posts", "{posts: paris & berlin}", map[string]any{"title": "shown"})
	gid := r.header.Get(forward.HeaderResource)

	url := c.sites["paris"].agent.URL() + "/"
	want := []string{"paris (this site)", "berlin", "rome", ">up<", gid, "{posts: paris &amp; berlin}", "paris=1",
		// The replication group of the resource, and berlin's heads equal
		// to paris' at the last anti-entropy comparison.
		">berlin,paris<", "berlin: same"}
	// Chromium dumps the page once it has loaded; the page's scripts may
	// still be fetching then, so the page is loaded again until it shows
	// everything, within a deadline.
	var dom string
	eventually(t, 60*time.Second, "the page shows the sites and the resource", func() error {
		dom = string(headless(t, bin, "--dump-dom", url))
		for _, w := range want {
			if !strings.Contains(dom, w) {
				return fmt.Errorf("rendered page lacks %q", w)
			}
		}
		return nil
	})
	shot := filepath.Join(t.TempDir(), "view.png")
	headless(t, bin, "--screenshot="+shot, url)
	info, err := os.Stat(shot)
	if err != nil || info.Size() < 10_000 {
		t.Fatalf("screenshot: %v, %d bytes", err, sizeOf(info))
	}
	if dir := os.Getenv("CHEOPS_SCREENSHOT_DIR"); dir != "" {
		data, _ := os.ReadFile(shot)
		os.WriteFile(filepath.Join(dir, "webview.png"), data, 0o644)
	}
}

func sizeOf(info os.FileInfo) int64 {
	if info == nil {
		return 0
	}
	return info.Size()
}
