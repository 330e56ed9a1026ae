package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"cheops/bench/wan"
)

// ensureCommand returns the path of the executable bin, or an error that
// names the Debian packages pkgs that provide it and how to install them.
// It installs nothing: the shipped binary never runs a package manager
// (contrib/install-deps.sh, `make deps`, installs what the benchmarks and
// tests need). ctx and log are unused; the signature is the one the
// scenarios call.
func ensureCommand(_ context.Context, _ *slog.Logger, bin string, pkgs ...string) (string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("%w: %s (Debian: apt-get install %s; or run contrib/install-deps.sh, `make deps`)",
			ErrMissingCommand, bin, strings.Join(pkgs, " "))
	}
	return p, nil
}

// ErrMissingCommand is wrapped by the error of a scenario that needs a
// program this machine lacks (haproxy, etcd).
var ErrMissingCommand = errors.New("bench: a program the scenario needs is not installed")

// ProcessGate lets processes that cannot choose their source address
// (etcd dials its peers from 127.0.0.1) reach a site through the
// cluster's emulated WAN. It listens on the target site's address in front
// of the WAN relay of that site, recognises which registered process opened
// each connection (by the socket's owner in /proc), and dials the relay
// from that process's site address, so the WAN applies the delays and cuts
// between those two sites. Connections from processes not registered are
// refused.
type ProcessGate struct {
	c     *Cluster
	log   *slog.Logger
	mu    sync.Mutex
	pids  map[int]int // pid → site index
	ls    []net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	done  bool
}

// NewProcessGate returns a gate over the cluster's WAN.
func NewProcessGate(c *Cluster, log *slog.Logger) *ProcessGate {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &ProcessGate{c: c, log: log, pids: map[int]int{}, conns: map[net.Conn]struct{}{}}
}

// Register says that connections opened by process pid come from site
// number site of the cluster.
func (g *ProcessGate) Register(pid, site int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pids[pid] = site
}

// Expose makes target (host:port, a listener of site number site) reachable
// through the WAN and returns the address other sites' processes must
// dial, on the site's own loopback address.
func (g *ProcessGate) Expose(site int, target string) (string, error) {
	name := g.c.Sites[site].Name
	relay, err := g.c.Net.Expose(name, wan.RelayAddr(site), target)
	if err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(g.c.Sites[site].ip, "0"))
	if err != nil {
		return "", fmt.Errorf("bench: gate for %s: %w", name, err)
	}
	g.mu.Lock()
	if g.done {
		g.mu.Unlock()
		l.Close()
		return "", errors.New("bench: gate closed")
	}
	g.ls = append(g.ls, l)
	g.wg.Add(1)
	g.mu.Unlock()
	go g.serve(l, site, relay)
	return l.Addr().String(), nil
}

// Close stops the listeners and closes every relayed connection.
func (g *ProcessGate) Close() {
	g.mu.Lock()
	g.done = true
	for _, l := range g.ls {
		l.Close()
	}
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

func (g *ProcessGate) track(c net.Conn, add bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if add {
		if g.done {
			return false
		}
		g.conns[c] = struct{}{}
	} else {
		delete(g.conns, c)
	}
	return true
}

func (g *ProcessGate) serve(l net.Listener, site int, relay string) {
	defer g.wg.Done()
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		if !g.track(in, true) {
			in.Close()
			return
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer g.track(in, false)
			defer in.Close()
			from, ok := g.source(in)
			if !ok {
				g.log.Debug("gate: connection from an unregistered process refused", "to", g.c.Sites[site].Name, "from", in.RemoteAddr())
				return
			}
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(g.c.Sites[from].ip)}}
			if from == site {
				d.LocalAddr = nil
			}
			out, err := d.Dial("tcp", relay)
			if err != nil {
				return
			}
			if !g.track(out, true) {
				out.Close()
				return
			}
			defer g.track(out, false)
			defer out.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(out, in)
				closeWrite(out)
			}()
			_, _ = io.Copy(in, out)
			closeWrite(in)
			wg.Wait()
		}()
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// source finds the registered process that owns the other end of c.
func (g *ProcessGate) source(c net.Conn) (int, bool) {
	remote, ok1 := c.RemoteAddr().(*net.TCPAddr)
	local, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return 0, false
	}
	inode, err := socketInode(remote, local)
	if err != nil {
		return 0, false
	}
	g.mu.Lock()
	pids := make(map[int]int, len(g.pids))
	for p, s := range g.pids {
		pids[p] = s
	}
	g.mu.Unlock()
	want := "socket:[" + inode + "]"
	for pid, site := range pids {
		fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", fd.Name())); err == nil && l == want {
				return site, true
			}
		}
	}
	return 0, false
}

// socketInode finds in /proc/net/tcp the inode of the IPv4 socket bound
// to local and connected to remote.
func socketInode(local, remote *net.TCPAddr) (string, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return "", err
	}
	defer f.Close()
	l, r := procAddr(local), procAddr(remote)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 9 && fields[1] == l && fields[2] == r {
			return fields[9], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("no socket %v→%v", local, remote)
}

// procAddr spells an IPv4 address as /proc/net/tcp does: the address as a
// little-endian 32-bit hex number, the port as big-endian hex.
func procAddr(a *net.TCPAddr) string {
	ip := a.IP.To4()
	if ip == nil {
		return ""
	}
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
}
