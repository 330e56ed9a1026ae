package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/internal/testkit"
	"cheops/replica"
)

func countPosts(t *testing.T, app string) int {
	resp, err := http.Get(app + "/posts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var posts []any
	json.NewDecoder(resp.Body).Decode(&posts)
	return len(posts)
}

// TestKilledBetweenExecuteAndRecord: rome owes a create; it runs it and is
// killed (SIGKILL) before recording the outcome; after a restart the
// create is not run again.
func TestKilledBetweenExecuteAndRecord(t *testing.T) {
	parisApp, romeApp := testkit.StartJSONServer(t, t.TempDir(), "posts"), testkit.StartJSONServer(t, t.TempDir(), "posts")
	dir := t.TempDir()
	parisData, romeData := filepath.Join(dir, "paris"), filepath.Join(dir, "rome")
	parisID, romeID := peerID(t, parisData), peerID(t, romeData)
	paris := startAgent(t, "paris", parisData, "--trust", romeID, "--service", "posts="+parisApp)
	romeArgs := []string{"--trust", parisID, "--peer", paris.addr(t), "--service", "posts=" + romeApp}
	rome := startAgent(t, "rome", romeData, romeArgs...)
	testkit.Eventually(t, 30*time.Second, "paris sees rome up", sitesIn(t, paris, map[string]string{"rome": "up"}))
	rome.stop(t)
	testkit.Eventually(t, 30*time.Second, "paris sees rome down", sitesIn(t, paris, map[string]string{"rome": "down"}))

	req, _ := http.NewRequest("POST", paris.api+"/svc/posts/posts", strings.NewReader(`{"title": "once"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Cheops-Scope", "{posts: paris & rome}")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	gid := resp.Header.Get("X-Cheops-Resource")
	if resp.StatusCode != 201 || resp.Header.Get("X-Cheops-Sites") != "paris=201, rome=pending" {
		t.Fatalf("create: %d %v", resp.StatusCode, resp.Header)
	}

	// rome comes back with the failpoint: it executes the create and dies.
	t.Setenv(replica.FailpointEnv, replica.FailCatchupAfterExecute)
	crashing := startAgent(t, "rome", romeData, romeArgs...)
	exited, err := crashing.waitExit(60 * time.Second)
	if !exited {
		t.Fatal("rome did not reach the failpoint")
	}
	if crashing.cmd.ProcessState.ExitCode() != -1 {
		t.Fatalf("rome exited with %v, want killed by SIGKILL", err)
	}
	if n := countPosts(t, romeApp); n != 1 {
		t.Fatalf("rome's application holds %d posts after the crash, want 1", n)
	}

	os.Unsetenv(replica.FailpointEnv)
	restarted := startAgent(t, "rome", romeData, romeArgs...)
	testkit.Eventually(t, 60*time.Second, "rome's outcome recorded", func() error {
		out, err := exec.Command(testkit.BuildBinary(t), "catalog", "get", gid, "--json", "--agent", restarted.api).Output()
		if err != nil {
			return fmt.Errorf("catalog get: %v", err)
		}
		var r catalog.Resource
		if err := json.Unmarshal(out, &r); err != nil {
			return err
		}
		if v := r.PerSite["rome"]; len(v.Pending) != 0 || v.LocalID == "" {
			return fmt.Errorf("rome: %+v", v)
		}
		return nil
	})
	if n := countPosts(t, romeApp); n != 1 {
		t.Fatalf("rome's application holds %d posts after recovery, want exactly 1", n)
	}
}
