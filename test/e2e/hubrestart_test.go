package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/testenv"
)

// TestHubStateSurvivesRestart restarts dpsd (SQLite store) and checks that
// a built-in hub keeps its devices, twins, modules, cloud-to-device queue,
// CA certificates and the telemetry it kept.
func TestHubStateSurvivesRestart(t *testing.T) {
	srv := startServerIn(t, "127.0.19")
	const hub = "e2e-hub"
	host := srv.Hub
	dpsdCLI(t, srv, "hub", "device-identity", "create", "-n", hub, "-d", "keeper-1")
	dpsdCLI(t, srv, "hub", "module-identity", "create", "-n", hub, "-d", "keeper-1", "-m", "probe")
	dpsdCLI(t, srv, "hub", "device-twin", "update", "-n", hub, "-d", "keeper-1", "--desired", `{"interval":42}`, "--tags", `{"site":"cellar"}`)
	dpsdCLI(t, srv, "hub", "c2d-message", "send", "-n", hub, "-d", "keeper-1", "--data", "kept-c2d", "--message-id", "c2d-1")
	root, err := certs.NewRoot("Restart Root", certs.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, root.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	dpsdCLI(t, srv, "hub", "certificate", "create", "--hub-name", hub, "-n", "restart-root", "--path", caFile, "--verified")
	token := strings.TrimSpace(dpsdCLI(t, srv, "hub", "generate-sas-token", "-n", hub, "-d", "keeper-1", "--duration", "1h"))

	// Telemetry over the device HTTPS endpoint, as the C SDK's HTTP transport sends it.
	device := func(method, path, body string) (int, string) {
		t.Helper()
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: srv.roots(t), ServerName: host},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, net.JoinHostPort(srv.IP, "443"))
			},
		}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequest(method, "https://"+host+path+"?api-version=2020-09-30", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", token)
		resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	if status, body := device(http.MethodPost, "/devices/keeper-1/messages/events", "kept-telemetry"); status != http.StatusNoContent {
		t.Fatalf("telemetry: %d %s", status, body)
	}

	srv.Stop(t)
	n, err := testenv.StartNode(t, testenv.NodeOptions{IP: srv.IP, DataDir: srv.DataDir, Args: []string{
		"--hostname", srv.IP,
		"--https-addr", net.JoinHostPort(srv.IP, "443"),
		"--mqtt-addr", net.JoinHostPort(srv.IP, "8883"),
		"--amqp-addr", net.JoinHostPort(srv.IP, "5671"),
		"--log-level", "debug",
	}})
	if err != nil {
		t.Fatal(err)
	}
	n.StopOnCleanup(t, logTailOnError)
	srv.Node = n

	if out := dpsdCLI(t, srv, "hub", "device-identity", "show", "-n", hub, "-d", "keeper-1"); !strings.Contains(out, "keeper-1") {
		t.Errorf("device after restart:\n%s", out)
	}
	if out := dpsdCLI(t, srv, "hub", "module-identity", "show", "-n", hub, "-d", "keeper-1", "-m", "probe"); !strings.Contains(out, "probe") {
		t.Errorf("module after restart:\n%s", out)
	}
	if out := dpsdCLI(t, srv, "hub", "device-twin", "show", "-n", hub, "-d", "keeper-1", "-o", "json"); !strings.Contains(out, `"interval": 42`) && !strings.Contains(out, `"interval":42`) || !strings.Contains(out, "cellar") {
		t.Errorf("twin after restart:\n%s", out)
	}
	if out := dpsdCLI(t, srv, "hub", "certificate", "show", "--hub-name", hub, "-n", "restart-root", "-o", "json"); !strings.Contains(out, `"isVerified": true`) && !strings.Contains(out, `"isVerified":true`) {
		t.Errorf("CA certificate after restart:\n%s", out)
	}
	if out := dpsdCLI(t, srv, "hub", "messages", "-n", hub, "--device-id", "keeper-1", "-o", "json"); !strings.Contains(out, "kept-telemetry") {
		t.Errorf("telemetry after restart:\n%s", out)
	}
	if status, body := device(http.MethodGet, "/devices/keeper-1/messages/deviceBound", ""); status != http.StatusOK || body != "kept-c2d" {
		t.Errorf("cloud-to-device message after restart: %d %q", status, body)
	}
}
