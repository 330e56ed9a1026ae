package testkit

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Eventually polls cond until it returns nil, and fails the test when it
// has not within the given time, with what and cond's last error. It
// polls every 10 ms at first, then less often, up to every 100 ms: a
// condition met at once is seen at once, and a long wait does not keep a
// loaded machine busy.
func Eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	pause := 10 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
			return
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// FreePort returns a loopback TCP port free at the time of the call,
// drawn at random below the kernel's ephemeral range (Linux: 32768 and
// up). A port the kernel hands out for ":0" can be handed again to any
// other test's socket as soon as it is closed, so a test that stops an
// agent and starts it again on the same port could find it taken (seen:
// a restarted agent's listener refused with "address already in use");
// the kernel never hands these out on its own.
func FreePort(t testing.TB) string {
	t.Helper()
	for range 200 {
		port := strconv.Itoa(freePortLow + rand.IntN(freePortHigh-freePortLow))
		l, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatal("testkit: no free port below the ephemeral range after 200 tries")
	return ""
}

// The range FreePort draws from: under Linux's ephemeral range.
const (
	freePortLow  = 20000
	freePortHigh = 32000
)

var binary struct {
	once sync.Once
	path string
	err  error
}

// BuildBinary builds the cheops command (cmd/cheops) once per test
// process and returns its path. A package whose tests call it runs them
// through Main, which removes the binary at the end.
func BuildBinary(t testing.TB) string {
	t.Helper()
	binary.once.Do(func() {
		dir, err := os.MkdirTemp("", "cheops-bin-")
		if err != nil {
			binary.err = err
			return
		}
		binary.path = filepath.Join(dir, "cheops")
		if out, err := exec.Command("go", "build", "-o", binary.path, "cheops/cmd/cheops").CombinedOutput(); err != nil {
			binary.err = fmt.Errorf("go build cheops/cmd/cheops: %w\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

// Main runs a package's tests and removes what BuildBinary built; a
// package's TestMain calls it: func TestMain(m *testing.M) { testkit.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if binary.path != "" {
		os.RemoveAll(filepath.Dir(binary.path))
	}
	os.Exit(code)
}

// StartJSONServer runs json-server, the REST application of the
// end-to-end tests, on a free loopback port with a data file in dir that
// holds the given collections, empty; it waits until the server answers
// and stops it when the test ends. It returns the base URL. Without
// json-server the test fails (Tool).
func StartJSONServer(t testing.TB, dir string, collections ...string) string {
	t.Helper()
	url, _ := StartJSONServerProcess(t, dir, collections...)
	return url
}

// StartJSONServerProcess is StartJSONServer that also returns the
// server's process id (for ProcessCPU).
func StartJSONServerProcess(t testing.TB, dir string, collections ...string) (url string, pid int) {
	t.Helper()
	bin := Tool(t, JSONServer, "json-server")
	db := filepath.Join(dir, "db.json")
	lists := make([]string, len(collections))
	for i, c := range collections {
		lists[i] = fmt.Sprintf("%q: []", c)
	}
	if err := os.WriteFile(db, []byte("{"+strings.Join(lists, ", ")+"}"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	cmd := exec.Command(bin, "--port", port, "--host", "127.0.0.1", "--quiet", db)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	url = "http://127.0.0.1:" + port
	probe := url
	if len(collections) > 0 {
		probe += "/" + collections[0]
	}
	Eventually(t, 30*time.Second, "json-server answers", func() error {
		resp, err := http.Get(probe)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return url, cmd.Process.Pid
}

// Buffer collects a child process's output (exec.Cmd's Stdout or
// Stderr) that the test reads while the process still writes: a
// bytes.Buffer safe for concurrent use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
