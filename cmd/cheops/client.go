package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// Helpers shared by the client commands (sites, catalog, request, …):
// every one finds its agent with --agent / CHEOPS_AGENT, talks JSON, and
// maps failures to the exit codes of main.go (exitOK, exitFailed,
// exitBadUsage).

// defaultAgent is the agent's API unless --agent or CHEOPS_AGENT say
// otherwise (agent.DefaultAPI).
const defaultAgent = "http://127.0.0.1:7070"

// agentFlag is the flag every client command takes to find its agent.
func agentFlag() cli.Flag {
	return &cli.StringFlag{Name: "agent", Usage: "base URL of the agent's API", Value: defaultAgent, EnvVars: []string{"CHEOPS_AGENT"}}
}

// agentBase returns the --agent URL without its trailing slash; a URL that
// is not http(s)://HOST[:PORT][/prefix] is bad usage (exit 2).
func agentBase(c *cli.Context) (string, error) {
	raw := c.String("agent")
	if raw == "" {
		raw = defaultAgent
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		return "", usageError("--agent %q: want a base URL such as %s", raw, defaultAgent)
	}
	return strings.TrimRight(raw, "/"), nil
}

// apiError is the JSON error body of the agent's API.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// getJSON fetches path from the agent and decodes the JSON answer into out.
func getJSON(ctx context.Context, c *cli.Context, path string, out any) error {
	return call(ctx, c, http.MethodGet, path, nil, out)
}

// call sends a request to the agent and decodes a JSON answer into out
// (unless out is nil). Errors are already mapped to exit codes (see do and
// statusError).
func call(ctx context.Context, c *cli.Context, method, path string, body io.Reader, out any) error {
	resp, err := do(ctx, c, method, path, body, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return failure("decode the answer to %s %s: %v", method, path, err)
	}
	return nil
}

// agentClient talks to the agent. It does not follow redirections: an
// application's 3xx is shown as it is (its Location may be an address
// only the agent reaches); the agent itself never redirects.
var agentClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// do sends a request to the agent and returns the raw response, whatever
// its status; the caller closes its body. An agent that cannot be reached
// is a failure (exit 1) that says where it was looked for.
func do(ctx context.Context, c *cli.Context, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	base, err := agentBase(c)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, usageError("request %s %s: %v", method, path, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token := os.Getenv("CHEOPS_API_TOKEN"); token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := agentClient.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, failure("agent at %s did not answer %s %s in time", base, method, path)
		}
		return nil, failure("no agent at %s (%v): is `cheops agent` running? Point --agent or CHEOPS_AGENT at it", base, err)
	}
	return resp, nil
}

// statusError turns an error answer into the command's error: 400 (bad
// scope, unknown site, bad input) and 413 (body over the limit) are the
// user's input, exit 2; every other error status is a failed request,
// exit 1. The agent's JSON message is kept; a non-JSON body is quoted.
func statusError(resp *http.Response) error {
	if resp.StatusCode < 400 {
		return nil
	}
	report := failure
	if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusRequestEntityTooLarge {
		report = usageError
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e apiError
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		if e.Code != "" {
			return report("%s (%d %s)", e.Error, resp.StatusCode, e.Code)
		}
		return report("%s (%d)", e.Error, resp.StatusCode)
	}
	return report("%s: %s", resp.Status, strings.TrimSpace(string(data)))
}

// clientTimeout bounds a one-shot client call: long enough for a request
// that fans out to slow sites, short enough that a hung agent is noticed.
const clientTimeout = 30 * time.Second

// clientContext bounds a one-shot client call.
func clientContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, clientTimeout)
}

var errNoArgs = errors.New("takes no arguments")

// noArgs refuses positional arguments (exit 2).
func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError("%s %v, got %q", c.Command.Name, errNoArgs, c.Args().Slice())
	}
	return nil
}

// printJSON writes v as one indented JSON document.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	return nil
}

func jsonUnmarshal(data string, v any) error { return json.Unmarshal([]byte(data), v) }
