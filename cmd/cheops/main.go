// Command cheops runs a site agent and talks to one.
//
// Each subcommand lives in its own file and registers itself with
// register in an init function, so that adding a command never touches
// another command's file.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"cheops/version"
)

// Exit codes, as README.md ("Using it") and `cheops --help` state them.
const (
	exitOK       = 0
	exitFailed   = 1
	exitBadUsage = 2
)

var commands []*cli.Command

// register adds a subcommand to the application.
func register(c *cli.Command) { commands = append(commands, c) }

// usageError reports bad usage or bad input: the process exits with 2.
func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitBadUsage)
}

// failure reports a request that failed: the process exits with 1.
func failure(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitFailed)
}

func newApp() *cli.App {
	sort.Slice(commands, func(i, j int) bool { return commands[i].Name < commands[j].Name })
	for _, c := range commands {
		setUsageErrors(c)
	}
	return &cli.App{
		Name:                 "cheops",
		Usage:                "run one unmodified application on every edge site, and use it as one system",
		Version:              version.String(),
		Commands:             commands,
		EnableBashCompletion: true,
		OnUsageError:         onUsageError,
		// Errors are printed and mapped to exit codes by exitCode, once.
		ExitErrHandler: func(*cli.Context, error) {},
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(c.App.ErrWriter, "cheops: unknown command %q\n", name)
			os.Exit(exitBadUsage)
		},
	}
}

func onUsageError(_ *cli.Context, err error, _ bool) error { return usageError("%v", err) }

// setUsageErrors makes flag errors of a command and its subcommands exit 2.
func setUsageErrors(c *cli.Command) {
	c.OnUsageError = onUsageError
	for _, sub := range c.Subcommands {
		setUsageErrors(sub)
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	err := app.RunContext(ctx, flagsFirst(app, os.Args))
	stop()
	os.Exit(exitCode(err))
}

// flagsFirst moves the flags of the invoked command ahead of its
// positional arguments, so that `cheops catalog get ID --json` works:
// urfave/cli/v2 stops reading flags at the first positional argument.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	cmds := app.Commands
	i := 1
	var leaf *cli.Command
	// Walk down the command path.
	for i < len(args) {
		var next *cli.Command
		for _, c := range cmds {
			if c.HasName(args[i]) {
				next = c
			}
		}
		if next == nil {
			break
		}
		leaf = next
		out = append(out, args[i])
		cmds = next.Subcommands
		i++
	}
	if leaf == nil {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range leaf.Flags {
		// Wrapped flags (altsrc) are not *cli.BoolFlag: ask the flag.
		tv, ok := f.(interface{ TakesValue() bool })
		for _, n := range f.Names() {
			takesValue[n] = !ok || tv.TakesValue()
		}
	}
	var flags, positional []string
	rest := args[i:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		if a == "--" {
			positional = append(positional, rest[j:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && takesValue[name] && j+1 < len(rest) {
			flags = append(flags, rest[j+1])
			j++
		}
	}
	out = append(out, flags...)
	return append(out, positional...)
}

// exitCode maps an error to the process exit code and prints it.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var coder cli.ExitCoder
	if errors.As(err, &coder) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "cheops:", msg)
		}
		return coder.ExitCode()
	}
	fmt.Fprintln(os.Stderr, "cheops:", err)
	// Actions wrap their errors with usageError or failure; what arrives
	// bare comes from urfave/cli itself: flag parsing, a required flag, a
	// configuration file that cannot be read. All of that is bad usage.
	return exitBadUsage
}
