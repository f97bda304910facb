package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/metrics"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/testenv"
)

// remoteHub is the part of an IoT hub's REST API that dpsd uses for a
// remote linked hub (registry statistics, device identities), served over
// HTTPS with a certificate of a private CA, checking every SAS token
// against the keys it currently accepts. It can stop answering and come
// back on the same address, as a hub does in an outage.
type remoteHub struct {
	t     *testing.T
	addr  string // host:port, the linked hub's name
	certs *testenv.TLSFiles

	mu      sync.Mutex
	keys    []string // base64 keys of the iothubowner policy accepted now
	devices map[string][]byte
	srv     *http.Server
}

func startRemoteHub(t *testing.T, ip string) *remoteHub {
	t.Helper()
	certs, err := testenv.ServerCertificate(t.TempDir(), net.ParseIP(ip))
	if err != nil {
		t.Fatal(err)
	}
	h := &remoteHub{t: t, certs: certs, keys: []string{sas.GenerateKey(32), sas.GenerateKey(32)}, devices: map[string][]byte{}}
	h.up(net.JoinHostPort(ip, "0"))
	t.Cleanup(h.down)
	return h
}

// up serves on addr (the hub's own address after the first start).
func (h *remoteHub) up(addr string) {
	h.t.Helper()
	cert, err := tls.LoadX509KeyPair(h.certs.CertFile, h.certs.KeyFile)
	if err != nil {
		h.t.Fatal(err)
	}
	var l net.Listener
	// The port was ours a moment ago; TIME_WAIT does not block a listener,
	// but give a slow close a few tries.
	for i := range 20 {
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(time.Duration(i+1) * 50 * time.Millisecond)
	}
	if err != nil {
		h.t.Fatalf("remote hub: %v", err)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	h.mu.Lock()
	h.addr, h.srv = l.Addr().String(), srv
	h.mu.Unlock()
	go srv.ServeTLS(l, "", "")
}

// down stops answering: the listener closes and open connections drop.
func (h *remoteHub) down() {
	h.mu.Lock()
	srv := h.srv
	h.srv = nil
	h.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

func (h *remoteHub) connectionString(key int) string {
	return "HostName=" + h.addr + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + h.keys[key]
}

func (h *remoteHub) caPEM(t *testing.T) string {
	b, err := os.ReadFile(h.certs.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// acceptOnly makes the hub accept only its key number key, as after a
// regenerated key.
func (h *remoteHub) acceptOnly(key int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.keys = []string{h.keys[key], ""}
}

func (h *remoteHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	tok, err := sas.Parse(r.Header.Get("Authorization"))
	var keys [][]byte
	for _, k := range h.keys {
		if b, err := base64.StdEncoding.DecodeString(k); err == nil && k != "" {
			keys = append(keys, b)
		}
	}
	if err != nil || tok.VerifyAny(keys...) < 0 {
		hubError(w, http.StatusUnauthorized, "IotHubUnauthorizedAccess", "the SAS token does not verify")
		return
	}
	if r.URL.Path == "/statistics/devices" && r.Method == http.MethodGet {
		fmt.Fprintf(w, `{"totalDeviceCount":%d,"enabledDeviceCount":%d,"disabledDeviceCount":0}`, len(h.devices), len(h.devices))
		return
	}
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/devices/")
	id, err := url.PathUnescape(rest)
	if !ok || err != nil || id == "" {
		hubError(w, http.StatusBadRequest, "ArgumentInvalid", "not served by the test hub: "+r.Method+" "+r.URL.Path)
		return
	}
	switch r.Method {
	case http.MethodGet:
		d, ok := h.devices[id]
		if !ok {
			hubError(w, http.StatusNotFound, "DeviceNotFound", "device "+id+" not found")
			return
		}
		_, _ = w.Write(d)
	case http.MethodPut:
		var dev map[string]any
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err := json.Unmarshal(body, &dev); err != nil {
			hubError(w, http.StatusBadRequest, "ArgumentInvalid", "bad device")
			return
		}
		dev["etag"] = "e1"
		h.devices[id], _ = json.Marshal(dev)
		_, _ = w.Write(h.devices[id])
	case http.MethodDelete:
		delete(h.devices, id)
		w.WriteHeader(http.StatusNoContent)
	default:
		hubError(w, http.StatusMethodNotAllowed, "ArgumentInvalid", "method")
	}
}

func hubError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]string{"Message": "ErrorCode:" + code + ";" + msg})
	_, _ = w.Write(b)
}

// TestAllocationFollowsHubHealth: a node checks its linked hubs in the
// background; while a remote hub does not answer, hashed allocation sends
// the devices that would have gone there to the healthy built-in hub and
// says so in the allocation log, the linked-hub list and the metrics; when
// the hub answers again, devices go to it again. The remote hub has a
// private certificate, trusted through the link's own CA bundle, and its
// key is rotated in place.
func TestAllocationFollowsHubHealth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Config{
		DataDir: t.TempDir(), HostName: "127.0.16.1",
		HTTPSAddr: "127.0.16.1:0", MQTTAddr: "127.0.16.1:0", AMQPAddr: "127.0.16.1:0",
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		HubHealthInterval: 50 * time.Millisecond, HubHealthTimeout: 2 * time.Second, HubHealthFailures: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	info := s.Info()

	// The built-in hub, linked as the CLI's "hub create" does.
	bi, err := s.hubs.Create(ctx, "local-hub", builtinhub.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	biCS, err := s.hubs.HubConnectionString(ctx, bi.HostName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.linked.Create(ctx, linkedhub.Definition{ConnectionString: biCS.String()}); err != nil {
		t.Fatal(err)
	}
	remote := startRemoteHub(t, "127.0.16.2")

	svc, err := service.New(info.ServiceConnectionString, service.WithCAFile(info.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	hubState := func(name string) *admin.LinkedHub {
		t.Helper()
		var hubs []admin.LinkedHub
		if err := svc.Do(ctx, http.MethodGet, "/dpsd/linkedHubs", nil, nil, &hubs, ""); err != nil {
			t.Fatal(err)
		}
		for _, h := range hubs {
			if h.Name == name {
				return &h
			}
		}
		t.Fatalf("hub %s not listed", name)
		return nil
	}
	// waitFor waits, bounded, until the hub's state is want.
	waitFor := func(name, want string) *admin.LinkedHub {
		t.Helper()
		var h *admin.LinkedHub
		for range 200 {
			if h = hubState(name); h.Health != nil && h.Health.State == want {
				return h
			}
			time.Sleep(25 * time.Millisecond)
		}
		t.Fatalf("hub %s did not become %s: %+v", name, want, h.Health)
		return nil
	}

	// Linked without its CA, the remote hub's certificate is not trusted:
	// unhealthy, with the reason.
	if err := svc.Do(ctx, http.MethodPost, "/dpsd/linkedHubs", nil,
		admin.LinkedHubDefinition{ConnectionString: remote.connectionString(0)}, nil, ""); err != nil {
		t.Fatal(err)
	}
	if h := waitFor(remote.addr, admin.HubHealthUnhealthy); !strings.Contains(h.Health.LastError, "certificate") {
		t.Errorf("untrusted hub's error %q does not speak of its certificate", h.Health.LastError)
	}
	ca := remote.caPEM(t)
	if err := svc.Do(ctx, http.MethodPatch, "/dpsd/linkedHubs/"+url.PathEscape(remote.addr), nil,
		admin.LinkedHubDefinition{CACertificates: &ca}, nil, ""); err != nil {
		t.Fatal(err)
	}
	if h := waitFor(remote.addr, admin.HubHealthHealthy); !strings.Contains(h.CACertificates, "BEGIN CERTIFICATE") {
		t.Errorf("the linked hub does not show its CA bundle")
	}
	waitFor(bi.HostName, admin.HubHealthHealthy)

	grp, err := svc.CreateEnrollmentGroup(ctx, &dps.EnrollmentGroup{
		EnrollmentGroupID: "health", Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Registration ids that hashed allocation gives to the remote hub
	// while both hubs are candidates.
	both := []*linkedhub.Hub{{Name: bi.HostName, AllocationWeight: 1}, {Name: remote.addr, AllocationWeight: 1}}
	var toRemote []string
	for i := 0; len(toRemote) < 6 && i < 1000; i++ {
		id := fmt.Sprintf("dev-%d", i)
		if allocate.Hashed(id, both).Name == remote.addr {
			toRemote = append(toRemote, id)
		}
	}
	register := func(id string) string {
		t.Helper()
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		defer rcancel()
		st, err := device.Register(rctx, device.Config{
			ProvisioningHost: info.HostName, DialAddr: info.HTTPSAddr, IDScope: info.IDScope, RegistrationID: id,
			GroupKey: grp.Attestation.SymmetricKey.PrimaryKey, Transport: device.TransportHTTPS,
			RootCAs: caPool(t, info.CACertFile), Timeout: 30 * time.Second,
		})
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
		return st.AssignedHub
	}

	// Healthy: the remote hub gets its devices.
	if got := register(toRemote[0]); got != remote.addr {
		t.Fatalf("%s assigned to %s while both hubs are healthy, want %s", toRemote[0], got, remote.addr)
	}

	// Down: the same kind of device goes to the built-in hub.
	remote.down()
	waitFor(remote.addr, admin.HubHealthUnhealthy)
	if v := gaugeValue(t, s.prom, metrics.LinkedHubHealth, map[string]string{"hub": remote.addr, "state": "unhealthy"}); v != 1 {
		t.Errorf("%s{state=unhealthy} = %v for a hub that is down, want 1", metrics.LinkedHubHealth, v)
	}
	for _, id := range toRemote[1:3] {
		if got := register(id); got != bi.HostName {
			t.Fatalf("%s assigned to %s while %s is down, want %s", id, got, remote.addr, bi.HostName)
		}
		entries, err := s.alog.List(ctx, id)
		if err != nil || len(entries) == 0 {
			t.Fatalf("allocation log of %s: %v, %d entries", id, err, len(entries))
		}
		e := entries[len(entries)-1]
		if !strings.Contains(e.Reason, "skipped as unhealthy: "+remote.addr) {
			t.Errorf("reason %q does not say the remote hub was skipped", e.Reason)
		}
		for _, c := range e.Candidates {
			wantHealth, wantSkipped := admin.HubHealthHealthy, false
			if c.Name == remote.addr {
				wantHealth, wantSkipped = admin.HubHealthUnhealthy, true
			}
			if c.Health != wantHealth || c.Skipped != wantSkipped {
				t.Errorf("candidate %s logged as %q skipped=%v, want %q skipped=%v", c.Name, c.Health, c.Skipped, wantHealth, wantSkipped)
			}
		}
	}

	// Back: the hub gets devices again.
	remote.up(remote.addr)
	waitFor(remote.addr, admin.HubHealthHealthy)
	if got := register(toRemote[3]); got != remote.addr {
		t.Fatalf("%s assigned to %s after the hub came back, want %s", toRemote[3], got, remote.addr)
	}

	// Key rotation: a key the hub does not accept is refused and changes
	// nothing; its other key is checked and replaces the first in place.
	wrong := "HostName=" + remote.addr + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + sas.GenerateKey(32)
	rotPath := "/dpsd/linkedHubs/" + url.PathEscape(remote.addr) + "/rotateKey"
	err = svc.Do(ctx, http.MethodPost, rotPath, nil, admin.LinkedHubKeyRotation{ConnectionString: wrong}, nil, "")
	var de *dps.Error
	if !errors.As(err, &de) || de.ErrorCode != dps.CodeInvalidArgument || !strings.Contains(de.Message, "old one stays") {
		t.Fatalf("rotate to a key the hub refuses: %v, want 400 saying the old key stays", err)
	}
	var rotated admin.LinkedHub
	if err := svc.Do(ctx, http.MethodPost, rotPath, nil, admin.LinkedHubKeyRotation{ConnectionString: remote.connectionString(1)}, &rotated, ""); err != nil {
		t.Fatalf("rotate to the hub's secondary key: %v", err)
	}
	if rotated.CACertificates == "" || strings.Contains(rotated.ConnectionString, remote.keys[1]) {
		t.Errorf("rotated hub %+v lost its CA bundle or shows its key", rotated)
	}
	remote.acceptOnly(1)
	if got := register(toRemote[4]); got != remote.addr {
		t.Fatalf("%s assigned to %s after the key rotation, want %s", toRemote[4], got, remote.addr)
	}
	if h := waitFor(remote.addr, admin.HubHealthHealthy); h.Health.ConsecutiveFailures != 0 {
		t.Errorf("hub unhealthy after the rotation: %+v", h.Health)
	}
}

// gaugeValue reads one gauge series of the node's metrics, or -1.
func gaugeValue(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			for k, v := range labels {
				if labelValue(s, k) != v {
					continue series
				}
			}
			return s.GetGauge().GetValue()
		}
	}
	return -1
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("no certificate in %s", file)
	}
	return pool
}
