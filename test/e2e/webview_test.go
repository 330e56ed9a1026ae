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
	"cheops/internal/testkit"
)

// chromium finds Debian's Chromium, or fails the test (testkit.Tool).
func chromium(t *testing.T) string {
	return testkit.Tool(t, "apt-get install chromium", "chromium", "chromium-browser")
}

// headless runs Chromium on a page with the flags this machine needs and
// stops it after eight seconds, time for the page's scripts to fetch and
// render (a virtual-time budget never ends: the page keeps an event stream
// open). Chromium under a loaded machine sometimes crashes or renders
// nothing in time: the error is returned for the caller's retry loop.
func headless(t *testing.T, bin string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--timeout=8000", "--window-size=1200,800"}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	// Chromium's zygote, renderers and helpers share its process group and
	// its stdout: on the deadline end them all, and stop waiting for the
	// pipe 5 s later whatever holds it.
	testkit.OwnGroup(cmd)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if cmd.Process != nil {
		testkit.EndGroup(cmd.Process.Pid)
	}
	if err != nil {
		return nil, fmt.Errorf("chromium %v: %w", args, err)
	}
	return out, nil
}

// renders loads url in Chromium until the rendered page holds every
// string of want, within 150 s (the page's scripts may still be
// fetching when Chromium dumps it, and Chromium may crash under load).
func renders(t *testing.T, bin, url string, want []string) string {
	t.Helper()
	var dom string
	testkit.Eventually(t, 150*time.Second, "the page at "+url+" shows what it should", func() error {
		out, err := headless(t, bin, "--dump-dom", url)
		if err != nil {
			return err
		}
		dom = string(out)
		for _, w := range want {
			if !strings.Contains(dom, w) {
				return fmt.Errorf("rendered page lacks %q", w)
			}
		}
		return nil
	})
	return dom
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
	renders(t, bin, url, want)
	shot := filepath.Join(t.TempDir(), "view.png")
	testkit.Eventually(t, 60*time.Second, "a screenshot of the page", func() error {
		if _, err := headless(t, bin, "--screenshot="+shot, url); err != nil {
			return err
		}
		if info, err := os.Stat(shot); err != nil || info.Size() < 10_000 {
			return fmt.Errorf("screenshot: %v, %d bytes", err, sizeOf(info))
		}
		return nil
	})
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
