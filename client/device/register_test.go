package device

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
)

const (
	opID         = "4.259b81f91c3838da.5195a6df-55e3-47d0-ba29-20503845e3aa"
	bodyAssigned = `{"operationId":"` + opID + `","status":"assigned","registrationState":{"registrationId":"my-device-01",` +
		`"assignedHub":"hub-1.example.net","deviceId":"my-device-01","status":"assigned","substatus":"initialAssignment",` +
		`"payload":{"echo":true}}}`
	bodyAssigning      = `{"operationId":"` + opID + `","status":"assigning"}`
	bodyAssigningState = `{"operationId":"` + opID + `","status":"assigning","registrationState":{"registrationId":"my-device-01","status":"assigning"}}`
	bodyFailed         = `{"operationId":"` + opID + `","status":"failed","registrationState":{"registrationId":"my-device-01",` +
		`"status":"failed","errorCode":400209,"errorMessage":"Custom allocation failed with status code: 401"}}`
	bodyDisabled = `{"operationId":"` + opID + `","status":"disabled","registrationState":{"registrationId":"my-device-01","status":"disabled"}}`
	body401      = `{"errorCode":401002,"trackingId":"t-1","message":"Unauthorized","timestampUtc":"2026-11-22T19:47:52.493Z"}`
	body429      = `{"errorCode":429001,"trackingId":"t-2","message":"Too many requests.","timestampUtc":"2026-11-22T19:47:52.493Z"}`
)

// recorder collects progress events.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) add(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) kinds() []EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var k []EventKind
	for _, e := range r.events {
		k = append(k, e.Kind)
	}
	return k
}

func (r *recorder) retryAfters() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var d []time.Duration
	for _, e := range r.events {
		if e.Kind == EventAssigning {
			d = append(d, e.RetryAfter)
		}
	}
	return d
}

func TestRegister(t *testing.T) {
	tests := []struct {
		name         string
		script       []step
		pollInterval time.Duration
		wantPolls    int
		wantHub      string
		wantWaits    []time.Duration // RetryAfter of each EventAssigning
		checkErr     func(t *testing.T, err error)
	}{
		{
			name:    "immediate terminal answer to register",
			script:  []step{{status: 200, body: bodyAssigned}},
			wantHub: "hub-1.example.net",
		},
		{
			name: "202 then poll until 200",
			script: []step{
				{status: 202, retryAfter: "0", body: bodyAssigning},
				{status: 202, retryAfter: "0", body: bodyAssigningState},
				{status: 200, body: bodyAssigned},
			},
			wantPolls: 2,
			wantHub:   "hub-1.example.net",
			wantWaits: []time.Duration{0, 0},
		},
		{
			name:         "no Retry-After uses the poll interval",
			script:       []step{{status: 202, body: bodyAssigning}, {status: 200, body: bodyAssigned}},
			pollInterval: time.Millisecond,
			wantPolls:    1,
			wantHub:      "hub-1.example.net",
			wantWaits:    []time.Duration{time.Millisecond},
		},
		{
			name:         "Retry-After 1 overrides the poll interval",
			script:       []step{{status: 202, retryAfter: "1", body: bodyAssigning}, {status: 200, body: bodyAssigned}},
			pollInterval: time.Hour,
			wantPolls:    1,
			wantHub:      "hub-1.example.net",
			wantWaits:    []time.Duration{time.Second},
		},
		{
			name:      "failed is a typed error with the allocation error code",
			script:    []step{{status: 202, retryAfter: "0", body: bodyAssigning}, {status: 200, body: bodyFailed}},
			wantPolls: 1,
			wantWaits: []time.Duration{0},
			checkErr: func(t *testing.T, err error) {
				e := mustDeviceError(t, err)
				if e.Status != dps.StatusFailed || e.Code() != 400209 || e.Op != "poll" || e.StatusCode != 200 || e.OperationID != opID {
					t.Errorf("error = %+v", e)
				}
				if !strings.Contains(e.Error(), "Custom allocation failed") {
					t.Errorf("message %q lacks the service message", e.Error())
				}
				var de *dps.Error
				if !errors.As(err, &de) || de.ErrorCode != 400209 {
					t.Errorf("errors.As dps.Error = %v", de)
				}
			},
		},
		{
			name:   "disabled is a typed error",
			script: []step{{status: 200, body: bodyDisabled}},
			checkErr: func(t *testing.T, err error) {
				e := mustDeviceError(t, err)
				if e.Status != dps.StatusDisabled || e.Op != "register" || e.State == nil {
					t.Errorf("error = %+v", e)
				}
			},
		},
		{
			name:   "401 carries the error body",
			script: []step{{status: 401, body: body401}},
			checkErr: func(t *testing.T, err error) {
				e := mustDeviceError(t, err)
				if e.StatusCode != 401 || e.Code() != 401002 || e.Detail.TrackingID != "t-1" || e.Temporary() {
					t.Errorf("error = %+v detail %+v", e, e.Detail)
				}
			},
		},
		{
			name:   "429 is temporary and keeps Retry-After",
			script: []step{{status: 429, retryAfter: "3", body: body429}},
			checkErr: func(t *testing.T, err error) {
				e := mustDeviceError(t, err)
				if e.StatusCode != 429 || e.Code() != 429001 || !e.Temporary() || e.RetryAfter != 3*time.Second {
					t.Errorf("error = %+v", e)
				}
			},
		},
		{
			name:      "404 without a DPS body on poll",
			script:    []step{{status: 202, retryAfter: "0", body: bodyAssigning}, {status: 404, body: "no such operation"}},
			wantPolls: 1,
			wantWaits: []time.Duration{0},
			checkErr: func(t *testing.T, err error) {
				e := mustDeviceError(t, err)
				if e.StatusCode != 404 || e.Code() != 404000 || e.Op != "poll" || e.Detail.Message != "no such operation" {
					t.Errorf("error = %+v detail %+v", e, e.Detail)
				}
			},
		},
		{
			name:   "assigning without operationId",
			script: []step{{status: 202, retryAfter: "0", body: `{"status":"assigning"}`}},
			checkErr: func(t *testing.T, err error) {
				if _, ok := errors.AsType[*Error](err); ok || !strings.Contains(err.Error(), "without operationId") {
					t.Errorf("err = %v", err)
				}
			},
		},
	}

	f := newFakeDPS(t)
	for _, tr := range []Transport{TransportHTTPS, TransportMQTT, TransportMQTTWS} {
		for _, tc := range tests {
			t.Run(string(tr)+"/"+tc.name, func(t *testing.T) {
				f.setScript(tc.script...)
				var rec recorder
				cfg := f.config(tr)
				cfg.PollInterval = tc.pollInterval
				cfg.Progress = rec.add
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				state, err := Register(ctx, cfg)

				f.mu.Lock()
				problems, requests, payloads := f.problems, f.requests, f.payloads
				f.mu.Unlock()
				for _, p := range problems {
					t.Errorf("server saw: %s", p)
				}
				polls := 0
				for _, r := range requests {
					if strings.HasPrefix(r, "GET poll ") {
						polls++
						if r != "GET poll "+opID {
							t.Errorf("request %q polls the wrong operation", r)
						}
					}
				}
				if polls != tc.wantPolls {
					t.Errorf("polls = %d, want %d (%q)", polls, tc.wantPolls, requests)
				}
				var reg dps.DeviceRegistration
				if len(payloads) == 0 || json.Unmarshal([]byte(payloads[0]), &reg) != nil ||
					reg.RegistrationID != testRegID || string(reg.Payload) != `{"modelId":"m1"}` {
					t.Errorf("register body = %q", payloads)
				}
				if got := rec.retryAfters(); !equalDurations(got, tc.wantWaits) {
					t.Errorf("waits = %v, want %v", got, tc.wantWaits)
				}
				kinds := rec.kinds()
				if len(kinds) < 3 || kinds[0] != EventConnected || kinds[1] != EventRegistering {
					t.Errorf("events = %v", kinds)
				}

				if tc.checkErr != nil {
					if err == nil {
						t.Fatalf("Register succeeded with %+v, want an error", state)
					}
					tc.checkErr(t, err)
					if kinds[len(kinds)-1] != EventFailed {
						t.Errorf("last event %v, want failed", kinds[len(kinds)-1])
					}
					return
				}
				if err != nil {
					t.Fatalf("Register: %v", err)
				}
				if state.AssignedHub != tc.wantHub || state.DeviceID != testRegID || string(state.Payload) != `{"echo":true}` {
					t.Errorf("state = %+v", state)
				}
				if kinds[len(kinds)-1] != EventAssigned {
					t.Errorf("last event %v, want assigned", kinds[len(kinds)-1])
				}
			})
		}
	}
}

// config returns a Config reaching the fake through DialAddr, with the TLS
// name of its certificate as the provisioning host.
func (f *fakeDPS) config(tr Transport) Config {
	addr := f.https.Listener.Addr().String()
	if tr == TransportMQTT {
		addr = f.mqttAddr
	}
	return Config{
		ProvisioningHost: "example.com", // a SAN of the httptest certificate
		DialAddr:         addr,
		IDScope:          testScope,
		RegistrationID:   testRegID,
		GroupKey:         testGroupKey,
		Payload:          json.RawMessage(`{"modelId":"m1"}`),
		Transport:        tr,
		RootCAs:          f.roots,
		RequestTimeout:   10 * time.Second,
	}
}

func mustDeviceError(t *testing.T, err error) *Error {
	t.Helper()
	e, ok := errors.AsType[*Error](err)
	if !ok {
		t.Fatalf("err = %v (%T), want *device.Error", err, err)
	}
	if e.Detail == nil {
		t.Fatalf("error without Detail")
	}
	return e
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSharedHTTPClientReusesConnections(t *testing.T) {
	f := newFakeDPS(t)
	cfg := f.config(TransportHTTPS)
	hc, err := NewHTTPClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.CloseIdleConnections()
	const n = 5
	for i := range n {
		f.setScript(step{status: 202, retryAfter: "0", body: bodyAssigning}, step{status: 200, body: bodyAssigned})
		c := cfg
		c.HTTPClient = hc
		if _, err := Register(context.Background(), c); err != nil {
			t.Fatalf("registration %d: %v", i, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns != 1 {
		t.Errorf("%d sequential registrations used %d TLS connections, want 1", n, f.conns)
	}
}

func TestRegisterWrongCA(t *testing.T) {
	f := newFakeDPS(t)
	for _, tr := range []Transport{TransportHTTPS, TransportMQTT, TransportMQTTWS} {
		t.Run(string(tr), func(t *testing.T) {
			cfg := f.config(tr)
			cfg.RootCAs = nil // system roots do not know the test CA
			_, err := Register(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Errorf("err = %v, want a certificate error", err)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no scope", Config{RegistrationID: "d", SymmetricKey: "eA=="}, "IDScope"},
		{"no registration id", Config{IDScope: "s", SymmetricKey: "eA=="}, "RegistrationID"},
		{"no key", Config{IDScope: "s", RegistrationID: "d"}, "SymmetricKey, GroupKey, Certificate or TPM"},
		{"TPM over MQTT", Config{IDScope: "s", RegistrationID: "d", TPM: noTPM{}, Transport: TransportMQTT}, "https, amqp and amqp-ws"},
		{"bad group key", Config{IDScope: "s", RegistrationID: "d", GroupKey: "!!"}, "base64"},
		{"bad transport", Config{IDScope: "s", RegistrationID: "d", SymmetricKey: "eA==", Transport: "coap"}, "unknown transport"},
		{"bad host", Config{IDScope: "s", RegistrationID: "d", SymmetricKey: "eA==", ProvisioningHost: "a/b"}, "invalid host"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Register(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestHostPort(t *testing.T) {
	tests := []struct {
		host, dial      string
		defPort         string
		wantURL, wantTo string
	}{
		{"dps.example.net", "", "443", "dps.example.net", "dps.example.net:443"},
		{"dps.example.net:8443", "", "443", "dps.example.net:8443", "dps.example.net:8443"},
		{"127.0.0.2", "", "8883", "127.0.0.2", "127.0.0.2:8883"},
		{"[::1]:8443", "", "443", "[::1]:8443", "[::1]:8443"},
		{"[::1]", "", "443", "[::1]", "[::1]:443"},
		{"dps.example.net", "127.0.0.2:9000", "443", "dps.example.net", "127.0.0.2:9000"},
	}
	for _, tc := range tests {
		c := Config{ProvisioningHost: tc.host, DialAddr: tc.dial, IDScope: "s", RegistrationID: "d", SymmetricKey: "eA=="}
		s, err := c.settings()
		if err != nil {
			t.Fatalf("%s: %v", tc.host, err)
		}
		if got := s.hostPort(tc.defPort); got != tc.wantURL {
			t.Errorf("%s: hostPort = %q, want %q", tc.host, got, tc.wantURL)
		}
		if got := s.addr(tc.defPort); got != tc.wantTo {
			t.Errorf("%s: addr = %q, want %q", tc.host, got, tc.wantTo)
		}
	}
}

func TestMQTTConnectRefused(t *testing.T) {
	f := newFakeDPS(t)
	f.mu.Lock()
	f.refuse = true
	f.mu.Unlock()
	for _, tr := range []Transport{TransportMQTT, TransportMQTTWS} {
		t.Run(string(tr), func(t *testing.T) {
			_, err := Register(context.Background(), f.config(tr))
			e := mustDeviceError(t, err)
			if e.Op != "connect" || e.StatusCode != 401 || e.Code() != dps.CodeUnauthorized {
				t.Errorf("error = %+v detail %+v", e, e.Detail)
			}
		})
	}
}

// noTPM is a TPM that is never used.
type noTPM struct{}

func (noTPM) EndorsementKey() []byte           { return nil }
func (noTPM) StorageRootKey() []byte           { return nil }
func (noTPM) ActivateIdentityKey([]byte) error { return nil }
func (noTPM) Sign([]byte) ([]byte, error)      { return nil, nil }
