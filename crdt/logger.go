package crdt

import (
	"context"
	"fmt"
	"log/slog"
)

// crdtLogger adapts slog to the logger go-ds-crdt expects. go-ds-crdt's
// info messages are chatty (one per processed head): they go to debug.
// Messages are formatted only when their level is enabled: go-ds-crdt
// logs once per processed block.
// The group is added to each message as it is logged: a logger made
// with it allocated at every wake.
type crdtLogger struct {
	l     *slog.Logger
	group string
}

func (c crdtLogger) log(level slog.Level, args []any) {
	if c.l.Enabled(context.Background(), level) {
		c.l.Log(context.Background(), level, fmt.Sprint(args...), "group", c.group)
	}
}

func (c crdtLogger) logf(level slog.Level, format string, args []any) {
	if c.l.Enabled(context.Background(), level) {
		c.l.Log(context.Background(), level, fmt.Sprintf(format, args...), "group", c.group)
	}
}

func (c crdtLogger) Debug(args ...any)                 { c.log(slog.LevelDebug, args) }
func (c crdtLogger) Debugf(format string, args ...any) { c.logf(slog.LevelDebug, format, args) }
func (c crdtLogger) Info(args ...any)                  { c.log(slog.LevelDebug, args) }
func (c crdtLogger) Infof(format string, args ...any)  { c.logf(slog.LevelDebug, format, args) }
func (c crdtLogger) Warn(args ...any)                  { c.log(slog.LevelWarn, args) }
func (c crdtLogger) Warnf(format string, args ...any)  { c.logf(slog.LevelWarn, format, args) }
func (c crdtLogger) Error(args ...any)                 { c.log(slog.LevelError, args) }
func (c crdtLogger) Errorf(format string, args ...any) { c.logf(slog.LevelError, format, args) }

// Fatal and Panic are logged as errors: a library must not end the
// process (go-ds-crdt v0.6.8 calls neither).
func (c crdtLogger) Fatal(args ...any)                 { c.log(slog.LevelError, args) }
func (c crdtLogger) Fatalf(format string, args ...any) { c.logf(slog.LevelError, format, args) }
func (c crdtLogger) Panic(args ...any)                 { c.log(slog.LevelError, args) }
func (c crdtLogger) Panicf(format string, args ...any) { c.logf(slog.LevelError, format, args) }
