package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds for everything the harness waits on.
const (
	buildTimeout   = 8 * time.Minute
	startTimeout   = 60 * time.Second
	stopTimeout    = 15 * time.Second
	startAttempts  = 3
	logTailOnError = 200
)

var (
	tmpRoot string // removed by TestMain

	buildOnce sync.Once
	binPath   string
	buildErr  error

	addrMu sync.Mutex
	// nextHost is the next host number to try in each /24: 127.0.3 for
	// most suites, 127.0.7 for the AMQP ones (amqp_test.go).
	nextHost = map[string]int{}
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dpsd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	tmpRoot = dir
	code := m.Run()
	if os.Getenv("DPSD_E2E_KEEP") == "" {
		os.RemoveAll(tmpRoot)
	} else {
		fmt.Fprintln(os.Stderr, "e2e: kept", tmpRoot)
	}
	os.Exit(code)
}

// inCI reports whether missing prerequisites must fail rather than skip.
func inCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "0" && v != "false"
}

// missing skips the test outside CI and fails it in CI.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if inCI() {
		t.Fatalf("prerequisite missing (CI is set, so this fails): %s", msg)
	}
	t.Skipf("skipping: %s (run scripts/install-test-deps.sh; in CI this fails)", msg)
}

// repoRoot is the module root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	return root
}

// dpsdBinary builds ./cmd/dpsd once per test process.
func dpsdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			if goroot := os.Getenv("GOROOT"); goroot != "" {
				goTool = filepath.Join(goroot, "bin", "go")
			} else {
				buildErr = fmt.Errorf("go tool not found: %w", err)
				return
			}
		}
		out := filepath.Join(tmpRoot, "bin", "dpsd")
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, "./cmd/dpsd")
		cmd.Dir = repoRoot(t)
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/dpsd: %v\n%s", err, buf.String())
			return
		}
		binPath = out
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// dpsdInfo mirrors server.Info (info.json); kept separate so that these tests
// compile whatever state the server package is in.
type dpsdInfo struct {
	IDScope                 string `json:"idScope"`
	ServiceConnectionString string `json:"serviceConnectionString"`
	CACertFile              string `json:"caCertFile"`
	HTTPSEndpoint           string `json:"httpsEndpoint"`
	MQTTEndpoint            string `json:"mqttEndpoint"`
	HostName                string `json:"hostName"`
	HTTPSAddr               string `json:"httpsAddr"`
	MQTTAddr                string `json:"mqttAddr"`
	AMQPAddr                string `json:"amqpAddr"`
}

type dpsdServer struct {
	// Hub is the host name of the built-in hub linked to the server.
	Hub      string
	IP       string
	DataDir  string
	InfoPath string
	LogPath  string
	Info     dpsdInfo

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// portsFree reports whether ip:443, ip:8883 and ip:5671 can be bound
// right now.
func portsFree(ip string) (bool, error) {
	for _, port := range []string{"443", "8883", "5671"} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
		if err != nil {
			if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
				return false, err
			}
			return false, nil
		}
		l.Close()
	}
	return true, nil
}

// pickAddress returns a loopback address of its own for one test server:
// 127.0.3.N with 443, 8883 and 5671 free. Other test packages use other
// addresses.
func pickAddress(t *testing.T) string { return pickAddressIn(t, "127.0.3") }

// pickAddressIn is pickAddress in the /24 prefix (e.g. "127.0.7").
func pickAddressIn(t *testing.T, prefix string) string {
	t.Helper()
	addrMu.Lock()
	defer addrMu.Unlock()
	for n := max(nextHost[prefix], 1); n <= 254; n++ {
		ip := fmt.Sprintf("%s.%d", prefix, n)
		free, err := portsFree(ip)
		if err != nil {
			missing(t, "cannot bind %s:443 (the SDKs need the standard ports; run as root or grant CAP_NET_BIND_SERVICE): %v", ip, err)
		}
		if free {
			nextHost[prefix] = n + 1
			return ip
		}
	}
	t.Fatalf("no free loopback address in %s.1-254 with ports 443, 8883 and 5671 free", prefix)
	return ""
}

// startServer builds dpsd, starts "dpsd serve" on a loopback address of its
// own with a fresh data directory, waits until it serves, and stops it
// (SIGTERM, then SIGKILL) when the test ends.
func startServer(t *testing.T) *dpsdServer { t.Helper(); return startServerIn(t, "127.0.3") }

// startServerIn is startServer on an address in the /24 prefix.
func startServerIn(t *testing.T, prefix string) *dpsdServer {
	t.Helper()
	bin := dpsdBinary(t)
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		srv, err := tryStart(t, bin, pickAddressIn(t, prefix))
		if err == nil {
			return srv
		}
		lastErr = err
		t.Logf("dpsd start attempt %d failed: %v", attempt, err)
	}
	t.Fatalf("dpsd serve did not start: %v", lastErr)
	return nil
}

func tryStart(t *testing.T, bin, ip string) (*dpsdServer, error) {
	t.Helper()
	dataDir, err := os.MkdirTemp(tmpRoot, "data-"+ip+"-")
	if err != nil {
		return nil, err
	}
	srv := &dpsdServer{
		IP:       ip,
		DataDir:  dataDir,
		InfoPath: filepath.Join(dataDir, "info.json"),
		LogPath:  dataDir + ".log",
		exited:   make(chan struct{}),
	}
	logFile, err := os.Create(srv.LogPath)
	if err != nil {
		return nil, err
	}
	args := []string{"serve",
		"--data-dir", dataDir,
		"--hostname", ip,
		"--https-addr", net.JoinHostPort(ip, "443"),
		"--mqtt-addr", net.JoinHostPort(ip, "8883"),
		"--amqp-addr", net.JoinHostPort(ip, "5671"),
		"--log-level", "debug",
	}
	srv.cmd = exec.Command(bin, args...)
	srv.cmd.Stdout, srv.cmd.Stderr = logFile, logFile
	setChildAttrs(srv.cmd)
	t.Logf("starting %s %s (log %s)", bin, strings.Join(args, " "), srv.LogPath)
	if err := srv.cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	go func() {
		srv.waitErr = srv.cmd.Wait()
		logFile.Close()
		close(srv.exited)
	}()

	if err := srv.waitReady(); err != nil {
		srv.stop(t)
		return nil, fmt.Errorf("%v\n--- dpsd log (%s) ---\n%s", err, srv.LogPath, tail(srv.LogPath, logTailOnError))
	}
	if err := srv.linkHub(t, bin); err != nil {
		srv.stop(t)
		return nil, fmt.Errorf("creating and linking the test hub: %v\n--- dpsd log (%s) ---\n%s", err, srv.LogPath, tail(srv.LogPath, logTailOnError))
	}
	t.Cleanup(func() {
		srv.stop(t)
		if t.Failed() {
			t.Logf("--- last %d lines of the dpsd log (%s) ---\n%s", logTailOnError, srv.LogPath, tail(srv.LogPath, logTailOnError))
		}
	})
	t.Logf("dpsd serving on %s: idScope=%s https=%s mqtt=%s ca=%s", ip, srv.Info.IDScope, srv.Info.HTTPSAddr, srv.Info.MQTTAddr, srv.Info.CACertFile)
	return srv, nil
}

// linkHub creates a built-in hub on a loopback address of its own and links
// it to the server, as a user would with the CLI, so that registrations land
// in a real hub. Its host name goes to the Node tests as DPSD_TEST_HUB.
func (s *dpsdServer) linkHub(t *testing.T, bin string) error {
	t.Helper()
	run := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append(args, "--data-dir", s.DataDir)...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("dpsd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out, nil
	}
	prefix := s.IP[:strings.LastIndex(s.IP, ".")]
	out, err := run("hub", "create", "e2e-hub", "--address", pickAddressIn(t, prefix), "-o", "json")
	if err != nil {
		return err
	}
	var h struct {
		HostName         string `json:"hostName"`
		ConnectionString string `json:"connectionString"`
	}
	if err := json.Unmarshal(out, &h); err != nil || h.HostName == "" || h.ConnectionString == "" {
		return fmt.Errorf("dpsd hub create answered %s (%v)", out, err)
	}
	if _, err := run("linked-hub", "create", "--connection-string", h.ConnectionString); err != nil {
		return err
	}
	s.Hub = h.HostName
	return nil
}

// waitReady polls (bounded) until info.json is complete and both listeners
// accept connections.
func (s *dpsdServer) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("dpsd serve exited before it was ready: %v", s.waitErr)
		case <-time.After(100 * time.Millisecond):
		}
		data, err := os.ReadFile(s.InfoPath)
		if err != nil {
			last = err
			continue
		}
		var info dpsdInfo
		if err := json.Unmarshal(data, &info); err != nil {
			last = fmt.Errorf("info.json: %v", err)
			continue
		}
		if info.IDScope == "" || info.ServiceConnectionString == "" || info.CACertFile == "" {
			last = fmt.Errorf("info.json incomplete: %s", data)
			continue
		}
		if info.HostName == "" {
			info.HostName = s.IP
		}
		if !filepath.IsAbs(info.CACertFile) {
			info.CACertFile = filepath.Join(s.DataDir, info.CACertFile)
		}
		httpsAddr, mqttAddr := orDefault(info.HTTPSAddr, net.JoinHostPort(s.IP, "443")), orDefault(info.MQTTAddr, net.JoinHostPort(s.IP, "8883"))
		if err := dialOK(httpsAddr); err != nil {
			last = err
			continue
		}
		if err := dialOK(mqttAddr); err != nil {
			last = err
			continue
		}
		if _, err := os.Stat(info.CACertFile); err != nil {
			return fmt.Errorf("caCertFile from info.json: %v", err)
		}
		s.Info = info
		return nil
	}
	return fmt.Errorf("dpsd not ready after %v: %v", startTimeout, last)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func dialOK(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// stop sends SIGTERM, waits (bounded), then SIGKILL. Only this server's PID.
func (s *dpsdServer) stop(t *testing.T) {
	select {
	case <-s.exited:
		return
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Logf("SIGTERM dpsd pid %d: %v", s.cmd.Process.Pid, err)
	}
	select {
	case <-s.exited:
		t.Logf("dpsd on %s stopped after SIGTERM (%v)", s.IP, s.waitErr)
		return
	case <-time.After(stopTimeout):
	}
	t.Errorf("dpsd pid %d did not stop within %v of SIGTERM; sending SIGKILL", s.cmd.Process.Pid, stopTimeout)
	s.cmd.Process.Kill()
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		t.Errorf("dpsd pid %d still running after SIGKILL", s.cmd.Process.Pid)
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
