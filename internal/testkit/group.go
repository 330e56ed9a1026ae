package testkit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// OwnGroup has cmd start in a process group of its own, killed whole
// when cmd's context is done: what it started (a browser's helpers, a
// script's commands) ends with it, not the first process alone. The
// group's id is then cmd.Process.Pid.
func OwnGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}

// EndGroup kills what is left of a process group and waits up to 10 s
// for it to be gone, so that none of it writes into a directory the
// test's cleanup removes.
func EndGroup(pgid int) {
	syscall.Kill(-pgid, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); groupRunning(pgid) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
}

// groupRunning counts the processes of the group that run: a zombie,
// ended but not yet reaped by its new parent, does not count.
func groupRunning(pgid int) int {
	n := 0
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // it ended since the glob
		}
		// pid (comm) state ppid pgrp …: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		var state byte
		var ppid, group int
		if _, err := fmt.Sscanf(string(b[i+1:]), " %c %d %d", &state, &ppid, &group); err == nil && group == pgid && state != 'Z' {
			n++
		}
	}
	return n
}
