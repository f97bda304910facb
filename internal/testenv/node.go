package testenv

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
)

// Bounds of what a node's harness waits on.
const (
	StartTimeout = 60 * time.Second
	StopTimeout  = 15 * time.Second
)

// NodeOptions say how to start one "dpsd serve".
type NodeOptions struct {
	// IP is the loopback address the node serves on; it is also the
	// host name info.json gets when the node does not say one.
	IP string
	// Name names the node in messages; "dpsd on IP" when empty.
	Name string
	// Args are the flags of "dpsd serve" besides --data-dir, which
	// StartNode adds.
	Args []string
	// Env is added to the test process's environment.
	Env []string
	// DataDir, when set, is the data directory of a node started before,
	// to restart it; the log goes on in the same file. When empty the node
	// gets a new one.
	DataDir string
}

// Node is one running "dpsd serve".
type Node struct {
	Name    string
	IP      string
	DataDir string
	LogPath string
	// Info is what the node wrote to info.json, with CACertFile made
	// absolute and HostName defaulting to IP.
	Info admin.Info

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// StartNode builds dpsd (once), starts "dpsd serve" with a fresh data
// directory and waits until it serves: info.json is complete and its
// listeners accept connections. On failure it stops the node and returns
// an error holding the log's tail. The caller stops the node (Stop, or
// StopOnCleanup).
func StartNode(t testing.TB, opt NodeOptions) (*Node, error) {
	t.Helper()
	bin := Binary(t)
	dataDir := opt.DataDir
	if dataDir == "" {
		var err error
		if dataDir, err = os.MkdirTemp(root, "node-"+opt.IP+"-"); err != nil {
			return nil, err
		}
	}
	n := &Node{
		Name:    opt.Name,
		IP:      opt.IP,
		DataDir: dataDir,
		LogPath: dataDir + ".log",
		exited:  make(chan struct{}),
	}
	if n.Name == "" {
		n.Name = "dpsd on " + opt.IP
	}
	logFile, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--data-dir", dataDir}, opt.Args...)
	n.cmd = exec.Command(bin, args...)
	if opt.Env != nil {
		n.cmd.Env = append(os.Environ(), opt.Env...)
	}
	n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
	SetChildAttrs(n.cmd)
	t.Logf("starting %s: %s %s (log %s)", n.Name, bin, strings.Join(args, " "), n.LogPath)
	if err := n.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", n.Name, err)
	}
	go func() {
		n.waitErr = n.cmd.Wait()
		logFile.Close()
		close(n.exited)
	}()
	if err := n.waitReady(); err != nil {
		n.Stop(t)
		return nil, fmt.Errorf("%s: %v\n%s", n.Name, err, n.LogTail(200))
	}
	t.Logf("%s serving: idScope %s, https %s, mqtt %s, pid %d", n.Name, n.Info.IDScope, n.Info.HTTPSAddr, n.Info.MQTTAddr, n.cmd.Process.Pid)
	return n, nil
}

// waitReady polls (bounded) until the node wrote a complete info.json,
// which it does once its store is open and its listeners are bound, and
// its listeners accept connections.
func (n *Node) waitReady() error {
	deadline := time.Now().Add(StartTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return fmt.Errorf("dpsd serve exited before it was ready: %v", n.waitErr)
		case <-time.After(100 * time.Millisecond):
		}
		data, err := os.ReadFile(filepath.Join(n.DataDir, "info.json"))
		if err != nil {
			last = err
			continue
		}
		var info admin.Info
		if err := json.Unmarshal(data, &info); err != nil {
			last = fmt.Errorf("info.json: %v", err)
			continue
		}
		if info.IDScope == "" || info.ServiceConnectionString == "" || info.HTTPSAddr == "" {
			last = fmt.Errorf("info.json incomplete: %s", data)
			continue
		}
		if err := DialOK(info.HTTPSAddr); err != nil {
			last = err
			continue
		}
		if info.MQTTAddr != "" {
			if err := DialOK(info.MQTTAddr); err != nil {
				last = err
				continue
			}
		}
		if info.HostName == "" {
			info.HostName = n.IP
		}
		if info.CACertFile != "" {
			if !filepath.IsAbs(info.CACertFile) {
				info.CACertFile = filepath.Join(n.DataDir, info.CACertFile)
			}
			if _, err := os.Stat(info.CACertFile); err != nil {
				return fmt.Errorf("caCertFile from info.json: %v", err)
			}
		}
		n.Info = info
		return nil
	}
	return fmt.Errorf("not ready after %v: %v", StartTimeout, last)
}

// DialOK reports whether addr accepts a TCP connection within a second.
func DialOK(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// Pid is the node's process id.
func (n *Node) Pid() int { return n.cmd.Process.Pid }

// Exited is closed when the node's process has ended.
func (n *Node) Exited() <-chan struct{} { return n.exited }

// LogTail returns the last lines lines of the node's log, headed by its
// path, for a failure message.
func (n *Node) LogTail(lines int) string {
	return fmt.Sprintf("--- last %d lines of %s's log (%s) ---\n%s", lines, n.Name, n.LogPath, Tail(n.LogPath, lines))
}

// StopOnCleanup stops the node when the test ends, and logs the tail of
// its log if the test failed.
func (n *Node) StopOnCleanup(t testing.TB, lines int) {
	t.Cleanup(func() {
		n.Stop(t)
		if t.Failed() {
			t.Log(n.LogTail(lines))
		}
	})
}

// Stop sends SIGTERM, waits (bounded), then SIGKILL: only this node's
// process id.
func (n *Node) Stop(t testing.TB) {
	select {
	case <-n.exited:
		return
	default:
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Logf("SIGTERM %s: %v", n.Name, err)
	}
	select {
	case <-n.exited:
		t.Logf("%s stopped after SIGTERM (%v)", n.Name, n.waitErr)
		return
	case <-time.After(StopTimeout):
	}
	t.Errorf("%s did not stop within %v of SIGTERM; sending SIGKILL", n.Name, StopTimeout)
	n.Kill(t)
}

// Kill ends the node at once with SIGKILL, as a crash or an OOM kill
// would, and waits (bounded) until it is gone.
func (n *Node) Kill(t testing.TB) {
	if err := n.cmd.Process.Kill(); err != nil {
		t.Logf("SIGKILL %s: %v", n.Name, err)
	}
	select {
	case <-n.exited:
	case <-time.After(StopTimeout):
		t.Errorf("%s still running %v after SIGKILL", n.Name, StopTimeout)
	}
}
