package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cheops/bench/wan"
	"cheops/internal/testkit"
)

// CreatesEnv, set to a number of seconds, runs TestReplicatedCreatesRate:
// the forwarding benchmark's replicated creates alone (2 agent processes,
// the Go application, 32 clients), with the CPU each process spent per
// create. CreatesProfileEnv, set to a directory, also saves both agents'
// CPU profiles and goroutine dumps taken under the load there;
// CreatesStraceEnv=1 counts both agents' fsyncs with strace (which slows
// them: the rate is then not the figure). CreatesBinaryEnv names a cheops
// binary to run instead of building one (A/B runs of two builds
// alternated in the same minutes).
const (
	CreatesEnv        = "CHEOPS_CREATES_SECONDS"
	CreatesProfileEnv = "CHEOPS_CREATES_PROFILE"
	CreatesStraceEnv  = "CHEOPS_CREATES_STRACE"
	CreatesBinaryEnv  = "CHEOPS_CREATES_BINARY"
)

func TestReplicatedCreatesRate(t *testing.T) {
	secs, err := strconv.ParseFloat(os.Getenv(CreatesEnv), 64)
	if err != nil || secs <= 0 {
		t.Skipf("set %s=SECONDS to measure replicated creates", CreatesEnv)
	}
	needJSONServer(t)
	d := time.Duration(secs * float64(time.Second))
	profDir := os.Getenv(CreatesProfileEnv)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute+2*d)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	names := citySites(2)
	siteArgs := map[string][]string{}
	for i, name := range names {
		tiny, err := startTinyApp(wan.SiteAddr(i))
		if err != nil {
			t.Fatal(err)
		}
		defer tiny.close()
		siteArgs[name] = []string{"--service", "items=" + tiny.URL}
	}
	var agentArgs []string
	if profDir != "" {
		agentArgs = append(agentArgs, "--pprof")
	}
	bin := os.Getenv(CreatesBinaryEnv)
	if bin == "" {
		bin = testkit.BuildBinary(t)
	}
	c, err := StartCluster(ctx, ClusterOptions{Binary: bin, Sites: names, Dir: t.TempDir(), SiteArgs: siteArgs, AgentArgs: agentArgs, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	app, remote := c.Sites[0], c.Sites[1]
	both := newTarget("replicated creates", app.API+"/svc/items", "{items: "+app.Name+" & "+remote.Name+"}")
	defer both.close()
	// Warm up: connections, groups, the Go runtime's heaps.
	if _, _, err := createRate(ctx, both, 32, time.Second); err != nil {
		t.Fatal(err)
	}
	var straces []*exec.Cmd
	if os.Getenv(CreatesStraceEnv) == "1" {
		for _, s := range c.Sites {
			out := filepath.Join(t.TempDir(), s.Name+".strace")
			cmd := exec.Command("strace", "-f", "-c", "-e", "trace=fsync,fdatasync,sync_file_range", "-o", out, "-p", strconv.Itoa(s.agent.Process.Pid))
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			straces = append(straces, cmd)
			defer func(name, out string) {
				b, _ := os.ReadFile(out)
				t.Logf("%s fsyncs:\n%s", name, b)
			}(s.Name, out)
		}
		time.Sleep(time.Second) // strace attaches to every thread
	}
	profiles := make(chan error, len(c.Sites))
	if profDir != "" {
		for _, s := range c.Sites {
			go func() {
				profiles <- fetchTo(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", s.API, int(secs)-1), filepath.Join(profDir, s.Name+".cpu.prof"))
			}()
		}
		go func() {
			time.Sleep(d / 2)
			for _, s := range c.Sites {
				_ = fetchTo(ctx, s.API+"/debug/pprof/goroutine?debug=1", filepath.Join(profDir, s.Name+".goroutines.txt"))
			}
		}()
	}
	if profDir != "" {
		for _, s := range c.Sites {
			_ = fetchTo(ctx, s.API+"/debug/pprof/allocs", filepath.Join(profDir, s.Name+".allocs0.prof"))
		}
	}
	m0 := scrape(ctx, c)
	cpu0 := cpuTimes(c)
	rate, errs, err := createRate(ctx, both, 32, d)
	cpu1 := cpuTimes(c)
	m1 := scrape(ctx, c)
	if profDir != "" {
		for _, s := range c.Sites {
			_ = fetchTo(ctx, s.API+"/debug/pprof/allocs", filepath.Join(profDir, s.Name+".allocs1.prof"))
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range straces {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
	}
	if profDir != "" {
		for range c.Sites {
			if err := <-profiles; err != nil {
				t.Error(err)
			}
		}
	}
	n := rate * d.Seconds()
	per := cpuPer(cpu0, cpu1, n)
	var parts []string
	for _, k := range []string{app.Name, remote.Name, "bench"} {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, per[k]))
	}
	t.Logf("%.0f creates/s over %v, %d errors; CPU µs per create: %s", rate, d, errs, strings.Join(parts, ", "))
	for _, s := range c.Sites {
		var per []string
		for _, k := range []string{"cheops_crdt_commits_total", "cheops_crdt_committed_writes_total", "cheops_crdt_broadcasts_total", "cheops_crdt_blocks_fetched_total"} {
			per = append(per, fmt.Sprintf("%s %.2f", strings.TrimPrefix(k, "cheops_crdt_"), (m1[s.Name][k]-m0[s.Name][k])/n))
		}
		t.Logf("%s per create: %s", s.Name, strings.Join(per, ", "))
	}
}

// scrape reads every agent's counters (/metrics, unlabelled ones).
func scrape(ctx context.Context, c *Cluster) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for _, s := range c.Sites {
		out[s.Name] = map[string]float64{}
		body, err := c.get(ctx, s.API+"/metrics")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(body), "\n") {
			k, v, ok := strings.Cut(line, " ")
			if !ok || strings.HasPrefix(k, "#") {
				continue
			}
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				out[s.Name][k] = f
			}
		}
	}
	return out
}

func fetchTo(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
