package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"cheops/errcode"
	"cheops/forward"
	"cheops/scope"
)

func init() {
	register(&cli.Command{
		Name:      "request",
		Usage:     "send a request through the local agent, placed by a scope",
		ArgsUsage: "METHOD PATH   (PATH as /svc/SERVICE/…)",
		Description: `Sends METHOD PATH to the agent, with the scope in X-Cheops-Scope. The status
line and the X-Cheops-* headers of the answer (and Location) go to standard
error, a 2xx answer's body to standard output. Redirections are not
followed.

Exit status:
  0  the answer is 2xx
  1  any other answer: the application's status, whatever it is (3xx, 4xx,
     5xx), or the agent's when it could not run the request (404
     unknown_service or unknown_resource, 502 site_failed, 503 unreachable,
     …); also when no agent answers
  2  bad usage, or a request refused locally, before it ran anywhere: by
     this command (a scope that does not parse: bad_scope; a --data file
     that cannot be read) or by the local agent (400 unknown_site,
     unbound_service, reserved_header, …; 405; 413 too_large; 431)
The error codes are those of the agent's API (docs/api.md).`,
		Flags: []cli.Flag{
			agentFlag(),
			&cli.StringFlag{Name: "scope", Usage: "where the request runs, e.g. '{posts: paris & berlin}'", EnvVars: []string{"CHEOPS_SCOPE"}},
			&cli.StringFlag{Name: "data", Usage: "request body, or @FILE to read it from a file (@- for standard input)", EnvVars: []string{"CHEOPS_DATA_BODY"}},
			&cli.StringFlag{Name: "content-type", Usage: "content type of the body", Value: "application/json", EnvVars: []string{"CHEOPS_CONTENT_TYPE"}},
		},
		Action: request,
	})
}

func request(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageError("request takes METHOD and PATH, got %d arguments", c.NArg())
	}
	method, path := strings.ToUpper(c.Args().Get(0)), c.Args().Get(1)
	if !strings.HasPrefix(path, "/") {
		return usageError("PATH %q must start with /, e.g. /svc/posts/posts", path)
	}
	header := http.Header{}
	if s := c.String("scope"); s != "" {
		// Refuse a bad scope here, with its column, before any network.
		if _, err := scope.Parse(s); err != nil {
			return usageError("--scope: %v (%s)", err, errcode.Of(err))
		}
		header.Set(forward.HeaderScope, s)
	}
	var body io.Reader
	if data := c.String("data"); data != "" {
		b, err := readData(data)
		if err != nil {
			return usageError("--data: %v", err)
		}
		body = bytes.NewReader(b)
		header.Set("Content-Type", c.String("content-type"))
	}
	ctx, cancel := clientContext(c)
	defer cancel()
	resp, err := do(ctx, c, method, path, body, header)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var names []string
	for k := range resp.Header {
		if strings.HasPrefix(k, "X-Cheops-") || k == "Location" {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	fmt.Fprintf(c.App.ErrWriter, "%s\n", resp.Status)
	for _, k := range names {
		fmt.Fprintf(c.App.ErrWriter, "%s: %s\n", k, resp.Header.Get(k))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return requestError(resp)
	}
	if _, err := io.Copy(c.App.Writer, resp.Body); err != nil {
		return failure("read answer: %v", err)
	}
	return nil
}

// requestError is the error of a non-2xx answer to `cheops request`: exit
// 2 when the local agent refused the request as malformed before running
// it anywhere (refusedLocally), 1 for every other status.
func requestError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e apiError
	isCheops := json.Unmarshal(data, &e) == nil && e.Code != ""
	report := failure
	if isCheops && refusedLocally(resp) {
		report = usageError
	}
	if isCheops {
		return report("%s (%d %s)", e.Error, resp.StatusCode, e.Code)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return report("%s", resp.Status)
	}
	return report("%s: %s", resp.Status, strings.TrimSpace(string(data)))
}

// refusedLocally tells an agent's refusal of a malformed request (400,
// 405, 413, 431, with no X-Cheops-Site: no application answered) from
// every other answer. An application's 400 carries X-Cheops-Site, the
// site whose application answered, and is the application's business.
func refusedLocally(resp *http.Response) bool {
	if resp.Header.Get(forward.HeaderSite) != "" {
		return false
	}
	switch resp.StatusCode {
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge, http.StatusRequestHeaderFieldsTooLarge:
		return true
	}
	return false
}

// readData returns BODY, or the contents of FILE for @FILE (@- is stdin).
func readData(data string) ([]byte, error) {
	name, ok := strings.CutPrefix(data, "@")
	switch {
	case !ok:
		return []byte(data), nil
	case name == "-":
		return io.ReadAll(os.Stdin)
	default:
		return os.ReadFile(name)
	}
}
