package multinode

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/testenv"
)

// hubIP is the fake hub's address, beside the nodes' in 127.0.0.50-59.
var hubIP = nodeIP(maxNodes - 1)

// fakeHub is the device registry REST API of an IoT hub, as much of it as
// dpsd's hub registrar uses to give a newly provisioned device its
// identity, running in the test process. Every node reaches it over HTTPS
// (it presents the nodes' certificate, which the nodes trust through
// SSL_CERT_FILE), so it stays up whichever node is killed, and it counts
// identity creations: a device provisioned exactly once is created once.
type fakeHub struct {
	name string // host:port, the linked hub's name and the assigned hub
	key  string // iothubowner key
	srv  *http.Server

	mu         sync.Mutex
	devices    map[string][]byte // lower-cased device id → device JSON as stored
	created    map[string]int    // lower-cased device id → successful creations
	etag       int
	unexpected []string
}

func startFakeHub(t *testing.T, certs *testenv.TLSFiles) *fakeHub {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certs.CertFile, certs.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(hubIP.String(), "0"))
	if err != nil {
		t.Fatalf("fake hub: %v", err)
	}
	h := &fakeHub{
		name:    l.Addr().String(),
		key:     sas.GenerateKey(32),
		devices: map[string][]byte{},
		created: map[string]int{},
	}
	h.srv = &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go h.srv.ServeTLS(l, "", "")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testenv.StopTimeout)
		defer cancel()
		_ = h.srv.Shutdown(ctx)
	})
	return h
}

// connectionString is the hub's iothubowner connection string, by which
// it is linked.
func (h *fakeHub) connectionString() string {
	return "HostName=" + h.name + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + h.key
}

func (h *fakeHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.Header.Get("Authorization"), "SharedAccessSignature ") {
		writeHubError(w, http.StatusUnauthorized, "IotHubUnauthorizedAccess", "no SAS token")
		return
	}
	if r.URL.Path == "/statistics/devices" && r.Method == http.MethodGet {
		// Every node's background health check of the linked hub.
		h.mu.Lock()
		n := len(h.devices)
		h.mu.Unlock()
		writeJSON(w, http.StatusOK, fmt.Appendf(nil, `{"totalDeviceCount":%d,"enabledDeviceCount":%d,"disabledDeviceCount":0}`, n, n))
		return
	}
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/devices/")
	id, err := url.PathUnescape(rest)
	if !ok || err != nil || id == "" || strings.Contains(rest, "/") {
		h.unexpectedRequest(w, r)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodPut, http.MethodDelete:
	default:
		h.unexpectedRequest(w, r)
		return
	}
	k := strings.ToLower(id)
	h.mu.Lock()
	defer h.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		d, ok := h.devices[k]
		if !ok {
			writeHubError(w, http.StatusNotFound, "DeviceNotFound", "device "+id+" not found")
			return
		}
		writeJSON(w, http.StatusOK, d)
	case http.MethodPut:
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var dev map[string]any
		if err == nil {
			err = json.Unmarshal(body, &dev)
		}
		if err != nil || !strings.EqualFold(fmt.Sprint(dev["deviceId"]), id) {
			writeHubError(w, http.StatusBadRequest, "ArgumentInvalid", "bad device body")
			return
		}
		_, exists := h.devices[k]
		match := r.Header.Get("If-Match")
		switch {
		case match == "" && exists:
			writeHubError(w, http.StatusConflict, "DeviceAlreadyExists", "device "+id+" already exists")
			return
		case match != "" && !exists:
			writeHubError(w, http.StatusNotFound, "DeviceNotFound", "device "+id+" not found")
			return
		case match == "":
			h.created[k]++
		}
		h.etag++
		dev["etag"] = fmt.Sprintf("e%d", h.etag)
		stored, _ := json.Marshal(dev)
		h.devices[k] = stored
		writeJSON(w, http.StatusOK, stored)
	case http.MethodDelete:
		if _, ok := h.devices[k]; !ok {
			writeHubError(w, http.StatusNotFound, "DeviceNotFound", "device "+id+" not found")
			return
		}
		delete(h.devices, k)
		w.WriteHeader(http.StatusNoContent)
	}
}

// unexpectedRequest answers a request the tests do not expect the
// registrar to make (twins, for example: no test enrollment has an initial
// twin) and records it so the test fails.
func (h *fakeHub) unexpectedRequest(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.unexpected = append(h.unexpected, r.Method+" "+r.URL.Path)
	h.mu.Unlock()
	writeHubError(w, http.StatusBadRequest, "ArgumentInvalid", "not supported by the test hub")
}

// check fails t if the hub saw requests it does not serve.
func (h *fakeHub) check(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.unexpected) > 0 {
		t.Errorf("the hub got requests it does not serve: %q", h.unexpected)
	}
}

// creations returns how often each device identity was created.
func (h *fakeHub) creations() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.created))
	for k, v := range h.created {
		out[k] = v
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeHubError answers in the hub's gateway error format.
func writeHubError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]string{"Message": "ErrorCode:" + code + ";" + msg})
	writeJSON(w, status, body)
}

// linkHub links h to the instance through n's linked hubs endpoint, as
// "dpsd linked-hub create" does.
func (c *cluster) linkHub(t *testing.T, n *node, h *fakeHub) {
	t.Helper()
	cs, err := sas.ParseConnectionString(n.info.ServiceConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	resource, _, err := net.SplitHostPort(cs.HostName)
	if err != nil {
		resource = cs.HostName
	}
	tok, err := sas.New(resource, cs.SharedAccessKeyName, cs.SharedAccessKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"connectionString": h.connectionString()})
	ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+n.info.HTTPSAddr+"/dpsd/linkedHubs", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.devHTTP.Do(req)
	if err != nil {
		t.Fatalf("link hub on %s: %v", n.name, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode/100 != 2 {
		t.Fatalf("link hub on %s: HTTP %d %s", n.name, resp.StatusCode, answer)
	}
	var linked struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(answer, &linked); err != nil || !strings.EqualFold(linked.Name, h.name) {
		t.Fatalf("link hub on %s: answered %s (%v), want hub %s", n.name, answer, err, h.name)
	}
}
