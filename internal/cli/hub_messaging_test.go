package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// hubCLIEnv is a built-in hub manager whose management API and shared
// hub endpoint are served over TLS on 127.0.10.30, for "dpsd hub"
// commands and the device's HTTPS requests.
type hubCLIEnv struct {
	t        *testing.T
	m        *builtinhub.Manager
	ca       *localca.CA
	caFile   string
	cs       string // service connection string for --connection-string
	hubsAddr string // the shared HTTPS endpoint of the hubs
	mqttAddr string // and the MQTT one
}

func newHubCLIEnv(t *testing.T) *hubCLIEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := localca.LoadOrCreate(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.10.30:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	adminL, hubsL, mqttL := listen(), listen(), listen()
	m, err := builtinhub.NewManager(st, builtinhub.Options{
		Logger:      slog.New(slog.DiscardHandler),
		Certificate: ca.ServerCertificate,
		Shared:      &builtinhub.Shared{Address: "127.0.10.30", HTTPSAddr: hubsL.Addr().String(), MQTTAddr: mqttL.Addr().String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	})
	go func() { _ = m.ServeListener(builtinhub.ProtocolHTTPS, hubsL) }()
	go func() { _ = m.ServeListener(builtinhub.ProtocolMQTT, mqttL) }()
	cert, err := ca.ServerCertificate("admin", []string{"127.0.10.30"})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler(), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.ServeTLS(adminL, "", "") }()
	t.Cleanup(func() { srv.Close() })
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	return &hubCLIEnv{
		t: t, m: m, ca: ca, caFile: ca.CertFile(), hubsAddr: hubsL.Addr().String(), mqttAddr: mqttL.Addr().String(),
		cs: "HostName=" + adminL.Addr().String() + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=c2VydmljZS1rZXk=",
	}
}

// run runs "dpsd hub ARGS" and returns its output.
func (e *hubCLIEnv) run(ctx context.Context, out io.Writer, args ...string) error {
	cmd := newHubCmd()
	cmd.SetOut(out)
	cmd.SetErr(out)
	cmd.SetArgs(append(args, "--connection-string", e.cs, "--ca-file", e.caFile))
	return cmd.ExecuteContext(ctx)
}

func (e *hubCLIEnv) mustRun(args ...string) string {
	e.t.Helper()
	var out bytes.Buffer
	if err := e.run(e.t.Context(), &out, args...); err != nil {
		e.t.Fatalf("dpsd hub %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// deviceHTTP sends a device API request for device id of hub host, signed
// with the device key, to the shared endpoint.
func (e *hubCLIEnv) deviceHTTP(host, id, key, method, path string, hdr map[string]string, body string) (*http.Response, string) {
	e.t.Helper()
	tok, err := sas.New(url.QueryEscape(host+"/devices/"+id), "", key, time.Now().Add(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	req, _ := http.NewRequest(method, "https://"+e.hubsAddr+path+"?api-version=2020-09-30", strings.NewReader(body))
	req.Host = host
	req.Header.Set("Authorization", tok)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.ca.Pool(), ServerName: host}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

const testDeviceKey = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="

func (e *hubCLIEnv) createDevice(hub, id string) string {
	e.t.Helper()
	h, ok := e.m.Hub(hub)
	if !ok {
		e.t.Fatalf("hub %s not running", hub)
	}
	if _, err := h.CreateDevice(e.t.Context(), &azurehub.Device{DeviceID: id, Authentication: &azurehub.Authentication{
		Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: testDeviceKey, SecondaryKey: testDeviceKey}}}); err != nil {
		e.t.Fatal(err)
	}
	return h.Config().HostName
}

// syncBuf is a bytes.Buffer safe for a command writing while a test reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestHubMonitorEventsFollow(t *testing.T) {
	e := newHubCLIEnv(t)
	e.mustRun("create", "monitor-hub")
	host := e.createDevice("monitor-hub", "thermostat-1")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &syncBuf{}
	done := make(chan error, 1)
	go func() { done <- e.run(ctx, out, "monitor-events", "-n", "monitor-hub", "--follow", "--timeout", "2m") }()

	// Sent after the watch started, over the device HTTPS API.
	resp, body := e.deviceHTTP(host, "thermostat-1", testDeviceKey, http.MethodPost, "/devices/thermostat-1/messages/events",
		map[string]string{"iothub-app-alert": "hot", "iothub-messageid": "m-1", "Content-Type": "application/json"}, `{"temperature":31.5}`)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("device telemetry over HTTPS: %d %s", resp.StatusCode, body)
	}
	var ev monitorEvent
	for deadline := time.Now().Add(20 * time.Second); ; {
		if line, _, ok := strings.Cut(out.String(), "\n}\n"); ok {
			if err := json.Unmarshal([]byte(line+"\n}"), &ev); err != nil {
				t.Fatalf("monitor-events printed %q: %v", out.String(), err)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("monitor-events --follow ended before the message came: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("monitor-events --follow did not print the message:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ev.Event.Origin != "thermostat-1" || ev.Event.Properties.Application["alert"] != "hot" ||
		ev.Event.Properties.System["messageId"] != "m-1" || ev.Event.Payload.(map[string]any)["temperature"] != 31.5 {
		t.Errorf("event %+v", ev.Event)
	}
	select {
	case err := <-done:
		t.Fatalf("monitor-events --follow ended after one message: %v", err)
	default:
	}
	cancel() // Ctrl-C
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("monitor-events --follow interrupted: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("monitor-events --follow did not stop when interrupted")
	}
	// Without --follow it prints what is kept and ends.
	if got := e.mustRun("monitor-events", "-n", "monitor-hub", "-d", "thermostat-1", "-o", "json"); !strings.Contains(got, `"origin": "thermostat-1"`) {
		t.Errorf("monitor-events without --follow: %s", got)
	}
}

func TestHubC2DOverHTTPS(t *testing.T) {
	e := newHubCLIEnv(t)
	e.mustRun("create", "c2d-hub")
	host := e.createDevice("c2d-hub", "lamp-1")
	recv := func() (*http.Response, string) {
		return e.deviceHTTP(host, "lamp-1", testDeviceKey, http.MethodGet, "/devices/lamp-1/messages/deviceBound", nil, "")
	}
	if resp, body := recv(); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("receive with nothing queued: %d %s", resp.StatusCode, body)
	}
	out := e.mustRun("c2d-message", "send", "-n", "c2d-hub", "-d", "lamp-1", "--data", "on", "--props", "brightness=80;room=hall",
		"--message-id", "c2d-1", "--correlation-id", "corr-1")
	if !strings.Contains(out, "c2d-1") {
		t.Errorf("c2d-message send printed %q", out)
	}
	resp, body := recv()
	lock := strings.Trim(resp.Header.Get("ETag"), `"`)
	if resp.StatusCode != http.StatusOK || body != "on" || lock == "" || resp.Header.Get("iothub-messageid") != "c2d-1" ||
		resp.Header.Get("iothub-correlationid") != "corr-1" || resp.Header.Get("iothub-app-brightness") != "80" || resp.Header.Get("iothub-app-room") != "hall" {
		t.Fatalf("receive: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	// Locked: not delivered again until abandoned.
	if resp, _ := recv(); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("a locked message was delivered again: %d", resp.StatusCode)
	}
	if resp, body := e.deviceHTTP(host, "lamp-1", testDeviceKey, http.MethodPost, "/devices/lamp-1/messages/deviceBound/"+lock+"/abandon", nil, ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("abandon: %d %s", resp.StatusCode, body)
	}
	resp, _ = recv()
	lock2 := strings.Trim(resp.Header.Get("ETag"), `"`)
	if resp.StatusCode != http.StatusOK || lock2 == "" || lock2 == lock {
		t.Fatalf("receive after abandon: %d, lock %q (was %q)", resp.StatusCode, lock2, lock)
	}
	if resp, _ := e.deviceHTTP(host, "lamp-1", testDeviceKey, http.MethodDelete, "/devices/lamp-1/messages/deviceBound/"+lock, nil, ""); resp.StatusCode != http.StatusPreconditionFailed {
		t.Errorf("complete with a stale lock token: %d, want 412", resp.StatusCode)
	}
	if resp, body := e.deviceHTTP(host, "lamp-1", testDeviceKey, http.MethodDelete, "/devices/lamp-1/messages/deviceBound/"+lock2, nil, ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("complete: %d %s", resp.StatusCode, body)
	}
	if resp, _ := recv(); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("a completed message was delivered again: %d", resp.StatusCode)
	}
	// Reject removes the message too.
	e.mustRun("c2d-message", "send", "-n", "c2d-hub", "-d", "lamp-1", "--data", "off")
	resp, _ = recv()
	lock = strings.Trim(resp.Header.Get("ETag"), `"`)
	if resp, body := e.deviceHTTP(host, "lamp-1", testDeviceKey, http.MethodDelete, "/devices/lamp-1/messages/deviceBound/"+lock+"?reject", nil, ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("reject: %d %s", resp.StatusCode, body)
	}
	if resp, _ := recv(); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("a rejected message was delivered again: %d", resp.StatusCode)
	}
	// Another device's key does not open lamp-1's queue.
	if resp, _ := e.deviceHTTP(host, "lamp-1", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=", http.MethodGet, "/devices/lamp-1/messages/deviceBound", nil, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("receive with a wrong key: %d, want 401", resp.StatusCode)
	}
	// Bad input to the CLI is refused before anything is sent.
	var buf bytes.Buffer
	if err := e.run(t.Context(), &buf, "c2d-message", "send", "-n", "c2d-hub", "-d", "lamp-1", "--props", "novalue"); err == nil {
		t.Error("--props without = accepted")
	}
	if err := e.run(t.Context(), &buf, "c2d-message", "send", "-n", "c2d-hub", "-d", "nobody", "--data", "x"); err == nil {
		t.Error("a message to a device that does not exist was accepted")
	}
}
