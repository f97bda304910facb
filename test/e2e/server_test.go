package e2e

import (
	"context"
	"crypto/x509"
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

	"github.com/dpsd/dpsd/internal/testenv"
)

// Bounds of starting a server.
const (
	startAttempts  = 3
	logTailOnError = 200
)

var (
	addrMu sync.Mutex
	// nextHost is the next host number to try in each /24: 127.0.3 for
	// most suites, 127.0.7 for the AMQP ones (amqp_test.go).
	nextHost = map[string]int{}
)

func TestMain(m *testing.M) { testenv.Main(m, "e2e") }

// dpsdServer is a "dpsd serve" on the standard ports of a loopback
// address of its own, with a built-in hub linked to it.
type dpsdServer struct {
	*testenv.Node
	// Hub is the host name of the built-in hub linked to the server.
	Hub      string
	HubAddr  string // the address the hub is reached on: the node's own
	InfoPath string
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
			testenv.Missing(t, "cannot bind %s:443 (the SDKs need the standard ports; run as root or grant CAP_NET_BIND_SERVICE): %v", ip, err)
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
// own with a fresh data directory, waits until it serves, links a built-in
// hub, and stops it (SIGTERM, then SIGKILL) when the test ends.
func startServer(t *testing.T) *dpsdServer { t.Helper(); return startServerIn(t, "127.0.3") }

// startServerIn is startServer on an address in the /24 prefix, with
// extra flags for "dpsd serve".
func startServerIn(t *testing.T, prefix string, extra ...string) *dpsdServer {
	t.Helper()
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		srv, err := tryStart(t, pickAddressIn(t, prefix), extra...)
		if err == nil {
			return srv
		}
		lastErr = err
		t.Logf("dpsd start attempt %d failed: %v", attempt, err)
	}
	t.Fatalf("dpsd serve did not start: %v", lastErr)
	return nil
}

func tryStart(t *testing.T, ip string, extra ...string) (*dpsdServer, error) {
	t.Helper()
	n, err := testenv.StartNode(t, testenv.NodeOptions{
		IP: ip,
		Args: append([]string{
			"--hostname", ip,
			"--https-addr", net.JoinHostPort(ip, "443"),
			"--mqtt-addr", net.JoinHostPort(ip, "8883"),
			"--amqp-addr", net.JoinHostPort(ip, "5671"),
			"--log-level", "debug",
		}, extra...),
	})
	if err != nil {
		return nil, err
	}
	srv := &dpsdServer{Node: n, InfoPath: filepath.Join(n.DataDir, "info.json")}
	if err := srv.linkHub(t, testenv.Binary(t)); err != nil {
		srv.Stop(t)
		return nil, fmt.Errorf("creating and linking the test hub: %v\n%s", err, srv.LogTail(logTailOnError))
	}
	srv.StopOnCleanup(t, logTailOnError)
	return srv, nil
}

// linkHub creates a built-in hub, served on the node's own listeners, and
// links it to the server, as a user would with the CLI, so that registrations land
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
	out, err := run("hub", "create", "e2e-hub", "-o", "json")
	if err != nil {
		return err
	}
	var h struct {
		HostName         string `json:"hostName"`
		Address          string `json:"address"` // dpsd's own: the hub shares its listeners
		ConnectionString string `json:"connectionString"`
	}
	if err := json.Unmarshal(out, &h); err != nil || h.HostName == "" || h.ConnectionString == "" {
		return fmt.Errorf("dpsd hub create answered %s (%v)", out, err)
	}
	if _, err := run("linked-hub", "create", "--connection-string", h.ConnectionString); err != nil {
		return err
	}
	s.Hub, s.HubAddr = h.HostName, h.Address
	return nil
}

// roots returns a pool holding the node's CA, which clients must trust.
func (s *dpsdServer) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(s.Info.CACertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}
