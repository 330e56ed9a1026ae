package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/internal/testkit"
	"cheops/replica"
)

// resourceAt reads a resource from an agent's catalog (GET /v1/resources/ID).
func resourceAt(api, gid string) (catalog.Resource, error) {
	var res catalog.Resource
	resp, err := http.Get(api + "/v1/resources/" + gid)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return res, fmt.Errorf("%s: %d %s", api, resp.StatusCode, body)
	}
	return res, json.NewDecoder(resp.Body).Decode(&res)
}

// attachVia asks an agent to attach a resource to a site; it returns the
// status and, for an error, the answer's code and message.
func attachVia(api, gid, site string) (int, string, error) {
	resp, err := http.Post(api+"/v1/resources/"+gid+"/attach", "application/json", strings.NewReader(fmt.Sprintf(`{"site": %q}`, site)))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, "", nil
	}
	var e struct{ Error, Code string }
	if json.Unmarshal(body, &e) != nil {
		return resp.StatusCode, string(body), nil
	}
	return resp.StatusCode, e.Code + ": " + e.Error, nil
}

// titled lists the ids of the items titled title in a json-server's posts.
func titled(t *testing.T, app, title string) []string {
	t.Helper()
	resp, err := http.Get(app + "/posts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var items []map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&items); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, it := range items {
		if it["title"] == title {
			ids = append(ids, fmt.Sprint(it["id"]))
		}
	}
	return ids
}

// The attach crash window: rome's agent is killed (SIGKILL, by a
// failpoint) after its application made the copy an attach sent and
// before the attach was journaled as done (attach-after-copy) or stamped
// (attach-before-stamp); it restarts, and the attach is run again through
// the same agent (a client retrying), through another agent, or through
// both at once. Read straight from rome's json-server, rome holds exactly
// one copy; every catalog names it as rome's and has rome in the set.
func TestAttachKilledBetweenCopyAndStamp(t *testing.T) {
	dir := t.TempDir()
	sites := []string{"paris", "berlin", "rome"}
	data, ids, apps := map[string]string{}, map[string]string{}, map[string]string{}
	for _, s := range sites {
		data[s] = filepath.Join(dir, s)
		ids[s] = peerID(t, data[s])
		apps[s] = testkit.StartJSONServer(t, t.TempDir(), "posts")
	}
	args := func(s string, peers ...*agentProc) []string {
		a := []string{"--service", "posts=" + apps[s]}
		for _, o := range sites {
			if o != s {
				a = append(a, "--trust", o+"="+ids[o])
			}
		}
		for _, p := range peers {
			a = append(a, "--peer", p.addr(t))
		}
		return a
	}
	paris := startAgent(t, "paris", data["paris"], args("paris")...)
	berlin := startAgent(t, "berlin", data["berlin"], args("berlin", paris)...)
	romeArgs := args("rome", paris, berlin)
	rome := startAgent(t, "rome", data["rome"], romeArgs...)
	agents := map[string]*agentProc{"paris": paris, "berlin": berlin, "rome": rome}
	allUp := map[string]string{"paris": "up", "berlin": "up", "rome": "up"}
	upEverywhere := func(what string) {
		t.Helper()
		for _, s := range sites {
			testkit.Eventually(t, 30*time.Second, what+" at "+s, sitesIn(t, agents[s], allUp))
		}
	}
	upEverywhere("every site up")

	rounds := []struct {
		point string
		via   []string // the agents that attach again after the restart
	}{
		{replica.FailAttachAfterCopy, []string{"paris"}},
		{replica.FailAttachAfterCopy, []string{"berlin"}},
		{replica.FailAttachAfterCopy, []string{"paris", "berlin"}},
		{replica.FailAttachBeforeStamp, []string{"paris"}},
		{replica.FailAttachBeforeStamp, []string{"berlin"}},
		{replica.FailAttachBeforeStamp, []string{"paris", "berlin"}},
	}
	for i, round := range rounds {
		name := fmt.Sprintf("round %d (%s, again via %s)", i, round.point, strings.Join(round.via, " and "))
		title := fmt.Sprintf("attached across a crash %d", i)
		req, _ := http.NewRequest(http.MethodPost, paris.api+"/svc/posts/posts", strings.NewReader(fmt.Sprintf(`{"title": %q}`, title)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Cheops-Scope", "{posts: paris & berlin}")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		gid := resp.Header.Get("X-Cheops-Resource")
		if resp.StatusCode != http.StatusCreated || gid == "" {
			t.Fatalf("%s: create: %d %v", name, resp.StatusCode, resp.Header)
		}
		testkit.Eventually(t, 20*time.Second, "berlin holds "+gid, func() error {
			res, err := resourceAt(berlin.api, gid)
			if err != nil {
				return err
			}
			if v := res.PerSite["berlin"]; v.LocalID == "" || len(v.Pending) != 0 {
				return fmt.Errorf("berlin: %+v", v)
			}
			return nil
		})

		// rome restarts with the failpoint and dies in the attach.
		rome.stop(t)
		t.Setenv(replica.FailpointEnv, round.point)
		rome = startAgent(t, "rome", data["rome"], romeArgs...)
		os.Unsetenv(replica.FailpointEnv)
		agents["rome"] = rome
		upEverywhere(name + ": rome up with the failpoint")
		status, body, err := attachVia(paris.api, gid, "rome")
		if exited, _ := rome.waitExit(30 * time.Second); !exited {
			t.Fatalf("%s: rome did not reach the failpoint; the attach answered %d %s %v", name, status, body, err)
		}
		if code := rome.cmd.ProcessState.ExitCode(); code != -1 {
			t.Fatalf("%s: rome exited %d, want killed by SIGKILL", name, code)
		}
		if got := titled(t, apps["rome"], title); len(got) != 1 {
			t.Fatalf("%s: after the crash rome's application holds %v, want the one copy made", name, got)
		}
		if err != nil || status != http.StatusGatewayTimeout || !strings.HasPrefix(body, "outcome_unknown: ") {
			t.Fatalf("%s: the attach rome died in answered %d %s %v, want 504 outcome_unknown", name, status, body, err)
		}
		t.Logf("%s: the attach through paris answered %d %s %v", name, status, body, err)

		// rome restarts as it was; the attach runs again.
		rome = startAgent(t, "rome", data["rome"], romeArgs...)
		agents["rome"] = rome
		upEverywhere(name + ": rome up again")
		var wg sync.WaitGroup
		answers := make([]string, len(round.via))
		for k, via := range round.via {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A client retries an attach that could not be delivered.
				deadline := time.Now().Add(20 * time.Second)
				for {
					status, body, err := attachVia(agents[via].api, gid, "rome")
					answers[k] = fmt.Sprintf("%s: %d %s", via, status, body)
					if err != nil {
						answers[k] += err.Error()
					}
					if err != nil || status != http.StatusServiceUnavailable || time.Now().After(deadline) {
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		ok := 0
		for _, a := range answers {
			switch {
			case strings.HasSuffix(a, ": 200 "):
				ok++
			case strings.Contains(a, ": 400 ") && strings.Contains(a, "already holds"):
			default:
				t.Fatalf("%s: attach again: %s", name, a)
			}
		}
		if ok == 0 {
			t.Fatalf("%s: no attach answered 200: %v", name, answers)
		}

		var local string
		testkit.Eventually(t, 20*time.Second, name+": every catalog names rome's copy", func() error {
			local = ""
			for _, s := range sites {
				res, err := resourceAt(agents[s].api, gid)
				if err != nil {
					return fmt.Errorf("%s: %v", s, err)
				}
				v, in := res.PerSite["rome"] // one view per site of the replica set
				l := v.LocalID
				switch {
				case !in || res.Scope != "{posts: paris & berlin & rome}":
					return fmt.Errorf("%s: rome not in the replica set: scope %s, sites %v", s, res.Scope, slices.Collect(maps.Keys(res.PerSite)))
				case l == "" || (local != "" && l != local):
					return fmt.Errorf("%s names %q as rome's copy, another site %q", s, l, local)
				}
				local = l
			}
			return nil
		})
		if got := titled(t, apps["rome"], title); len(got) != 1 || got[0] != local {
			t.Errorf("%s: rome's application holds %v, the catalogs name %q", name, got, local)
			continue
		}
		how := "the outcome it names"
		if strings.Contains(rome.stderr.String(), "adopting the copy an attach cut short made") {
			how = "looked up"
		}
		t.Logf("%s: one copy in rome (%s, %s); answers %q", name, local, how, answers)
	}
}
