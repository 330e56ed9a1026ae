package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"cheops/forward"
	"cheops/scope"
)

func init() {
	register(&cli.Command{
		Name:      "request",
		Usage:     "send a request through the local agent, placed by a scope",
		ArgsUsage: "METHOD PATH   (PATH as /svc/SERVICE/…)",
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
			return usageError("--scope: %v", err)
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
		if strings.HasPrefix(k, "X-Cheops-") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	fmt.Fprintf(c.App.ErrWriter, "%s\n", resp.Status)
	for _, k := range names {
		fmt.Fprintf(c.App.ErrWriter, "%s: %s\n", k, resp.Header.Get(k))
	}
	if resp.StatusCode >= 400 {
		return statusError(resp)
	}
	if _, err := io.Copy(c.App.Writer, resp.Body); err != nil {
		return failure("read answer: %v", err)
	}
	return nil
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
