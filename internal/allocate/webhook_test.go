package allocate

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/provision"
)

// azureSchedule is the waits of Azure's retry policy: 10 retries, 1 s
// first, 9 s more each time.
var azureSchedule = seconds(1, 10, 19, 28, 37, 46, 55, 64, 73, 82)

// TestCustomAllocationOutcomes has one case per row of the outcome table
// (spec README and service-api.md §5.5), plus dpsd's documented choices,
// each against a real webhook on 127.0.0.1.
func TestCustomAllocationOutcomes(t *testing.T) {
	okHub := `{"iotHubHostName":"` + hubA + `"}`
	tests := []struct {
		name       string
		answer     func(n int, r *http.Request) (int, string)
		wantHub    string
		wantCode   int
		wantMsg    string // substring of the error message
		wantCalls  int
		wantSleeps []time.Duration
	}{
		{name: "200 with linked hub", answer: always(200, okHub), wantHub: hubA, wantCalls: 1},
		{name: "200 with hub in other case", answer: always(200, `{"iotHubHostName":"`+strings.ToUpper(hubB)+`"}`), wantHub: hubB, wantCalls: 1},
		{name: "200 with empty hub", answer: always(200, `{"iotHubHostName":""}`), wantCode: dps.CodeCustomAllocationIoTHubNotSpecified, wantCalls: 1},
		{name: "200 with null hub", answer: always(200, `{"iotHubHostName":null}`), wantCode: dps.CodeCustomAllocationIoTHubNotSpecified, wantCalls: 1},
		{name: "200 without hub member", answer: always(200, `{"payload":{"a":1}}`), wantCode: dps.CodeCustomAllocationIoTHubNotSpecified, wantCalls: 1},
		{name: "200 with empty body", answer: always(200, ``), wantCode: dps.CodeCustomAllocationIoTHubNotSpecified, wantCalls: 1},
		{name: "401", answer: always(401, `unauthorized`), wantCode: dps.CodeCustomAllocationUnauthorizedAccess, wantCalls: 1},
		{name: "400", answer: always(400, `"Unrecognized device registration."`), wantCode: dps.CodeCustomAllocationFailed,
			wantMsg: "Custom allocation failed with status code: 400", wantCalls: 1},
		{name: "403", answer: always(403, ``), wantCode: dps.CodeCustomAllocationFailed, wantMsg: "status code: 403", wantCalls: 1},
		{name: "404", answer: always(404, ``), wantCode: dps.CodeCustomAllocationFailed, wantMsg: "status code: 404", wantCalls: 1},
		{name: "201 is not 200", answer: always(201, okHub), wantCode: dps.CodeCustomAllocationFailed, wantMsg: "status code: 201", wantCalls: 1},
		{name: "redirect not followed", answer: func(int, *http.Request) (int, string) { return 307, `` }, wantCode: dps.CodeCustomAllocationFailed, wantMsg: "status code: 307", wantCalls: 1},
		{name: "500 until retries run out", answer: always(500, `{"error":"boom"}`), wantCode: dps.CodeCustomAllocationFailed,
			wantMsg: "Custom allocation failed with status code: 500", wantCalls: 11, wantSleeps: azureSchedule},
		{name: "503 until retries run out", answer: always(503, ``), wantCode: dps.CodeCustomAllocationFailed,
			wantMsg: "status code: 503", wantCalls: 11, wantSleeps: azureSchedule},
		{name: "429 then 200", answer: func(n int, _ *http.Request) (int, string) {
			if n == 0 {
				return 429, ``
			}
			return 200, okHub
		}, wantHub: hubA, wantCalls: 2, wantSleeps: seconds(1)},
		{name: "500 500 502 then 200", answer: func(n int, _ *http.Request) (int, string) {
			if n < 3 {
				return []int{500, 500, 502}[n], ``
			}
			return 200, okHub
		}, wantHub: hubA, wantCalls: 4, wantSleeps: seconds(1, 10, 19)},
		{name: "200 on the last retry", answer: func(n int, _ *http.Request) (int, string) {
			if n < 10 {
				return 500, ``
			}
			return 200, okHub
		}, wantHub: hubA, wantCalls: 11, wantSleeps: azureSchedule},
		{name: "200 with hub that is not a candidate", answer: always(200, `{"iotHubHostName":"`+hubC+`"}`),
			wantCode: dps.CodeIoTHubNotLinked, wantMsg: hubC, wantCalls: 1},
		{name: "200 with invalid JSON", answer: always(200, `{"iotHubHostName":`), wantCode: dps.CodeCustomAllocationFailed, wantMsg: "not a valid allocation response", wantCalls: 1},
		{name: "200 with non-object payload", answer: always(200, `{"iotHubHostName":"`+hubA+`","payload":"text"}`), wantCode: dps.CodeCustomAllocationFailed, wantMsg: "payload", wantCalls: 1},
		{name: "200 with too large answer", answer: always(200, `{"iotHubHostName":"`+hubA+`","payload":{"x":"`+strings.Repeat("x", 70<<10)+`"}}`),
			wantCode: dps.CodeCustomAllocationFailed, wantMsg: "larger than", wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ws := newWebhookServer(t, tt.answer)
			ts := newTestAllocator(t, hubList{hub(hubA, 1, true, ""), hub(hubB, 1, true, ""), hub(hubC, 1, false, "")}, nil)
			in := groupInput("breakroom499-contoso-tstrsd-007", customGroup(ws.hookURL(), hubA, hubB))

			got, err := ts.alloc.Allocate(t.Context(), in)
			if tt.wantCode != 0 {
				if errCode(err) != tt.wantCode {
					t.Fatalf("Allocate = %+v, %v; want error code %d", got, err, tt.wantCode)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("error %q does not contain %q", err, tt.wantMsg)
				}
			} else {
				if err != nil {
					t.Fatalf("Allocate: %v", err)
				}
				if got.Hub != tt.wantHub {
					t.Errorf("hub = %q; want %q", got.Hub, tt.wantHub)
				}
			}
			if n := len(ws.seen()); n != tt.wantCalls {
				t.Errorf("webhook called %d times; want %d", n, tt.wantCalls)
			}
			if s := ts.clock.Sleeps(); !slices.Equal(s, tt.wantSleeps) {
				t.Errorf("waits = %v; want %v", s, tt.wantSleeps)
			}

			// The audit trail tells the same story.
			entries, err := ts.audit.List(t.Context(), in.RegistrationID)
			if err != nil || len(entries) != 1 {
				t.Fatalf("audit entries = %v, %v; want 1", entries, err)
			}
			e := entries[0]
			if len(e.Attempts) != tt.wantCalls || e.Retries != tt.wantCalls-1 {
				t.Errorf("audit: %d attempts, %d retries; want %d, %d", len(e.Attempts), e.Retries, tt.wantCalls, tt.wantCalls-1)
			}
			wantOutcome := alloclog.OutcomeAssigned
			if tt.wantCode != 0 {
				wantOutcome = alloclog.OutcomeFailed
			}
			if e.Outcome != wantOutcome || e.ErrorCode != tt.wantCode || e.Hub != tt.wantHub {
				t.Errorf("audit outcome = %s %d %q; want %s %d %q", e.Outcome, e.ErrorCode, e.Hub, wantOutcome, tt.wantCode, tt.wantHub)
			}
			for i, w := range tt.wantSleeps {
				if got := e.Attempts[i].RetryAfterMs; got != w.Milliseconds() {
					t.Errorf("audit: attempt %d retryAfterMs = %d; want %d", i+1, got, w.Milliseconds())
				}
			}
		})
	}
}

// TestCustomAllocationTimeout: a webhook that never answers within the
// attempt timeout is retried like a 5xx, then fails with 400207.
func TestCustomAllocationTimeout(t *testing.T) {
	release := make(chan struct{})
	ws := newWebhookServer(t, func(_ int, r *http.Request) (int, string) {
		select {
		case <-r.Context().Done(): // dpsd gave up on this attempt
		case <-release:
		}
		return 0, ""
	})
	// Close(release) before the server's Close (cleanups run last-first),
	// so no handler is left blocked.
	t.Cleanup(func() { close(release) })
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, func(o *WebhookOptions) {
		o.AttemptTimeout = 50 * time.Millisecond // the only real wait: 3 × 50 ms
		o.Retries = 2
	})
	_, err := ts.alloc.Allocate(t.Context(), groupInput("slow-device", customGroup(ws.hookURL())))
	if errCode(err) != dps.CodeCustomAllocationFailed || !strings.Contains(err.Error(), "did not answer within 50ms") {
		t.Fatalf("err = %v; want 400207 'did not answer within 50ms'", err)
	}
	if s := ts.clock.Sleeps(); !slices.Equal(s, seconds(1, 10)) {
		t.Errorf("waits = %v; want [1s 10s]", s)
	}
	entries, _ := ts.audit.List(t.Context(), "slow-device")
	if len(entries) != 1 || len(entries[0].Attempts) != 3 || entries[0].Attempts[0].Error == "" || entries[0].Attempts[0].Status != 0 {
		t.Errorf("audit = %+v; want 3 attempts with errors and no status", entries)
	}
}

// TestCustomAllocationUnreachable: connection refused is retried on the full
// schedule, then fails with 400207.
func TestCustomAllocationUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, nil)
	_, err = ts.alloc.Allocate(t.Context(), groupInput("lonely-device", customGroup("http://"+addr+"/api/allocate?code=x")))
	if errCode(err) != dps.CodeCustomAllocationFailed || !strings.Contains(err.Error(), "could not be reached") {
		t.Fatalf("err = %v; want 400207 'could not be reached'", err)
	}
	if s := ts.clock.Sleeps(); !slices.Equal(s, azureSchedule) {
		t.Errorf("waits = %v; want %v", s, azureSchedule)
	}
	entries, _ := ts.audit.List(t.Context(), "lonely-device")
	if len(entries) != 1 || len(entries[0].Attempts) != 11 {
		t.Fatalf("audit = %+v; want 11 attempts", entries)
	}
	if strings.Contains(entries[0].WebhookURL, "code=x") {
		t.Errorf("audit webhook URL %q shows the key", entries[0].WebhookURL)
	}
}

// TestCustomAllocationGivesUpWithContext: a registration whose time runs
// out while waiting to retry fails at once instead of sleeping on.
func TestCustomAllocationGivesUpWithContext(t *testing.T) {
	ws := newWebhookServer(t, always(503, ``))
	ctx, cancel := context.WithCancel(t.Context())
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, func(o *WebhookOptions) {
		inner := o.Sleep
		o.Sleep = func(c context.Context, d time.Duration) error {
			if d == 19*time.Second {
				cancel()
			}
			return inner(c, d)
		}
	})
	_, err := ts.alloc.Allocate(ctx, groupInput("dev", customGroup(ws.hookURL())))
	if errCode(err) != dps.CodeCustomAllocationFailed || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err = %v; want 400207 timed out", err)
	}
	if n := len(ws.seen()); n != 3 {
		t.Errorf("webhook called %d times; want 3", n)
	}
}

// TestCustomAllocationPassthrough: initialTwin and payload reach the
// Allocation unchanged.
func TestCustomAllocationPassthrough(t *testing.T) {
	answer := `{"iotHubHostName":"` + hubB + `",
		"initialTwin":{"tags":{"deviceType":"heatpump"},"properties":{"desired":{"state":"on","temperatureSetting":"65"}}},
		"payload":{"hello":"device","n":[1,2,3]}}`
	ws := newWebhookServer(t, always(200, answer))
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, ""), hub(hubB, 1, true, "")}, nil)
	got, err := ts.alloc.Allocate(t.Context(), groupInput("mainbuilding167-contoso-hpsd-088", customGroup(ws.hookURL())))
	if err != nil {
		t.Fatal(err)
	}
	if got.Hub != hubB {
		t.Errorf("hub = %q", got.Hub)
	}
	if got.InitialTwin == nil || got.InitialTwin.Properties == nil {
		t.Fatalf("initial twin = %+v", got.InitialTwin)
	}
	assertJSON(t, "tags", got.InitialTwin.Tags, `{"deviceType":"heatpump"}`)
	assertJSON(t, "desired", got.InitialTwin.Properties.Desired, `{"state":"on","temperatureSetting":"65"}`)
	assertJSON(t, "payload", got.Payload, `{"hello":"device","n":[1,2,3]}`)

	// Without them, the Allocation leaves both nil so the enrollment's
	// twin applies.
	ws2 := newWebhookServer(t, always(200, `{"iotHubHostName":"`+hubA+`","initialTwin":null,"payload":null}`))
	got, err = ts.alloc.Allocate(t.Context(), groupInput("d2", customGroup(ws2.hookURL())))
	if err != nil || got.InitialTwin != nil || got.Payload != nil {
		t.Errorf("Allocate = %+v, %v; want no twin and no payload", got, err)
	}
}

func assertJSON(t *testing.T, what string, got json.RawMessage, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Errorf("%s: %s is not JSON: %v", what, got, err)
		return
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("%s = %s; want %s", what, gb, wb)
	}
}

// TestCustomAllocationRequestShape checks the body dpsd sends against
// service-api.md §5.2: masked URL, no keys, deviceRuntimeContext members,
// linkedHubs.
func TestCustomAllocationRequestShape(t *testing.T) {
	// The webhook picks the first hub it is offered.
	answer := func(_ int, r *http.Request) (int, string) {
		var req dps.AllocationRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.LinkedHubs) == 0 {
			return 400, `"bad request"`
		}
		return 200, `{"iotHubHostName":"` + req.LinkedHubs[0] + `"}`
	}
	payload := json.RawMessage(`{"MyDeviceFirmwareVersion":"12.0.2.5","MyDeviceProvisioningVersion":"1.0.0.0"}`)
	hubs := hubList{hub(hubA, 1, true, ""), hub(hubB, 7, true, "eastus"), hub(hubC, 1, false, "")}

	tests := []struct {
		name      string
		in        func(url string) *provision.AllocationInput
		wantHubs  []string
		wantCheck func(t *testing.T, body map[string]any)
	}{
		{
			name: "group, first registration, all linked hubs",
			in: func(url string) *provision.AllocationInput {
				in := groupInput("breakroom499-contoso-tstrsd-007", customGroup(url))
				in.DevicePayload = payload
				return in
			},
			wantHubs: []string{hubA, hubB}, // hubC does not apply allocation policy
			wantCheck: func(t *testing.T, body map[string]any) {
				drc := body["deviceRuntimeContext"].(map[string]any)
				assertMembers(t, "deviceRuntimeContext", drc, "registrationId", "symmetricKey", "payload")
				if drc["registrationId"] != "breakroom499-contoso-tstrsd-007" {
					t.Errorf("registrationId = %v", drc["registrationId"])
				}
				if sk, _ := json.Marshal(drc["symmetricKey"]); string(sk) != "{}" {
					t.Errorf("symmetricKey = %s; want {}", sk)
				}
				p, _ := json.Marshal(drc["payload"])
				assertJSON(t, "payload", p, string(payload))
				g := body["enrollmentGroup"].(map[string]any)
				if a, _ := json.Marshal(g["attestation"]); string(a) != `{"type":"symmetricKey"}` {
					t.Errorf("attestation = %s; want {\"type\":\"symmetricKey\"}", a)
				}
				if _, ok := body["individualEnrollment"]; ok {
					t.Error("individualEnrollment present for a group device")
				}
				for _, m := range []string{"enrollmentGroupId", "allocationPolicy", "reprovisionPolicy", "provisioningStatus", "etag"} {
					if _, ok := g[m]; !ok {
						t.Errorf("enrollmentGroup lacks %s", m)
					}
				}
			},
		},
		{
			name: "group naming hubs, re-registration",
			in: func(url string) *provision.AllocationInput {
				in := groupInput("dev-2", customGroup(url, hubB, hubC, "not-linked.example"))
				in.Previous = &dps.DeviceRegistrationState{RegistrationID: "dev-2", AssignedHub: hubA, DeviceID: "dev-2-id", Status: dps.StatusAssigned}
				return in
			},
			wantHubs: []string{hubB, hubC}, // named hubs count even without applyAllocationPolicy; unlinked ones do not
			wantCheck: func(t *testing.T, body map[string]any) {
				drc := body["deviceRuntimeContext"].(map[string]any)
				assertMembers(t, "deviceRuntimeContext", drc, "registrationId", "symmetricKey", "currentIotHubHostName", "currentDeviceId")
				if drc["currentIotHubHostName"] != hubA || drc["currentDeviceId"] != "dev-2-id" {
					t.Errorf("current hub/device = %v/%v", drc["currentIotHubHostName"], drc["currentDeviceId"])
				}
			},
		},
		{
			name: "never reprovision offers only the current hub",
			in: func(url string) *provision.AllocationInput {
				g := customGroup(url, hubA, hubB)
				g.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: false}
				in := groupInput("dev-3", g)
				in.Previous = &dps.DeviceRegistrationState{RegistrationID: "dev-3", AssignedHub: hubA, DeviceID: "dev-3", Status: dps.StatusAssigned}
				return in
			},
			wantHubs: []string{hubA},
		},
		{
			name: "individual enrollment",
			in: func(url string) *provision.AllocationInput {
				return &provision.AllocationInput{
					RegistrationID:  "single-device",
					AttestationType: dps.AttestationSymmetricKey,
					Enrollment: &dps.IndividualEnrollment{
						RegistrationID: "single-device", DeviceID: "single",
						Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey,
							SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: groupKey, SecondaryKey: secondaryKey}},
						AllocationPolicy:           dps.AllocationCustom,
						CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: url, APIVersion: "2019-03-31"},
					},
				}
			},
			wantHubs: []string{hubA, hubB},
			wantCheck: func(t *testing.T, body map[string]any) {
				if _, ok := body["enrollmentGroup"]; ok {
					t.Error("enrollmentGroup present for an individual enrollment")
				}
				e := body["individualEnrollment"].(map[string]any)
				if e["registrationId"] != "single-device" || e["deviceId"] != "single" {
					t.Errorf("individualEnrollment = %v", e)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ws := newWebhookServer(t, answer)
			ts := newTestAllocator(t, hubs, nil)
			in := tt.in(ws.hookURL())
			if _, err := ts.alloc.Allocate(t.Context(), in); err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			seen := ws.seen()
			if len(seen) != 1 {
				t.Fatalf("%d requests; want 1", len(seen))
			}
			r := seen[0]
			if r.method != http.MethodPost || r.path != "/api/allocate" || r.rawQuery != "code="+functionCode {
				t.Errorf("request = %s %s?%s; want POST to the URL exactly as configured", r.method, r.path, r.rawQuery)
			}
			if r.contentType != "application/json" {
				t.Errorf("Content-Type = %q", r.contentType)
			}
			for _, secret := range []string{groupKey, secondaryKey, functionCode} {
				if strings.Contains(string(r.body), secret) {
					t.Errorf("request body contains secret %q: %s", secret, r.body)
				}
			}
			var body map[string]any
			if err := json.Unmarshal(r.body, &body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			var sent struct {
				LinkedHubs []string `json:"linkedHubs"`
				Group      *struct {
					Custom dps.CustomAllocationDefinition `json:"customAllocationDefinition"`
				} `json:"enrollmentGroup"`
				Enrollment *struct {
					Custom dps.CustomAllocationDefinition `json:"customAllocationDefinition"`
				} `json:"individualEnrollment"`
			}
			if err := json.Unmarshal(r.body, &sent); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sent.LinkedHubs, tt.wantHubs) {
				t.Errorf("linkedHubs = %v; want %v", sent.LinkedHubs, tt.wantHubs)
			}
			def := dps.CustomAllocationDefinition{}
			if sent.Group != nil {
				def = sent.Group.Custom
			} else if sent.Enrollment != nil {
				def = sent.Enrollment.Custom
			}
			if want := ws.URL + "/api/allocate?****"; def.WebhookURL != want {
				t.Errorf("webhookUrl = %q; want %q", def.WebhookURL, want)
			}
			if tt.wantCheck != nil {
				tt.wantCheck(t, body)
			}
			// The caller's enrollment is untouched.
			if g := in.Group; g != nil && (g.Attestation.SymmetricKey == nil || !strings.Contains(g.CustomAllocationDefinition.WebhookURL, functionCode)) {
				t.Error("BuildRequest modified the enrollment group")
			}
		})
	}
}

func assertMembers(t *testing.T, what string, m map[string]any, want ...string) {
	t.Helper()
	var got []string
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s members = %v; want %v", what, got, want)
	}
}

// TestCustomAllocationHTTPS: a webhook behind a private CA is trusted only
// when its CA is configured, and an untrusted certificate is not retried.
func TestCustomAllocationHTTPS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"iotHubHostName":"` + hubA + `"}`))
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())

	tests := []struct {
		name     string
		pool     *x509.CertPool
		wantCode int
	}{
		{name: "CA configured", pool: pool},
		{name: "CA not configured", wantCode: dps.CodeCustomAllocationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, func(o *WebhookOptions) { o.CAPool = tt.pool })
			got, err := ts.alloc.Allocate(t.Context(), groupInput("tls-device", customGroup(srv.URL+"/alloc")))
			if tt.wantCode != 0 {
				if errCode(err) != tt.wantCode || !strings.Contains(err.Error(), "not trusted") {
					t.Fatalf("err = %v; want %d not trusted", err, tt.wantCode)
				}
				if len(ts.clock.Sleeps()) != 0 {
					t.Errorf("an untrusted certificate was retried")
				}
				return
			}
			if err != nil || got.Hub != hubA {
				t.Fatalf("Allocate = %+v, %v", got, err)
			}
		})
	}
}

func TestMaskURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://app.azurewebsites.net/api/HttpTrigger1?code=abc==&x=1", "https://app.azurewebsites.net/api/HttpTrigger1?****"},
		{"https://app.example/api/alloc", "https://app.example/api/alloc"},
		{"http://127.0.0.1:8090/?", "http://127.0.0.1:8090/?****"},
		{"https://user:pass@app.example/a?k=v#frag", "https://****@app.example/a?****"},
		{"https://app.example/a#k=v", "https://app.example/a"},
	}
	for _, tt := range tests {
		if got := MaskURL(tt.in); got != tt.want {
			t.Errorf("MaskURL(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

// TestWebhookAnswerNotEchoed: what a webhook answers is whatever its
// URL's target sent (a refusal, an error page, a debug endpoint's output);
// none of it reaches the device, and the allocation log keeps only its
// first alloclog.MaxWebhookTextBytes bytes, as the webhook's text.
func TestWebhookAnswerNotEchoed(t *testing.T) {
	secret := "SECRET-" + strings.Repeat("x", 300) + "-TAIL"
	tests := []struct {
		name   string
		status int
		body   string
		want   int
	}{
		{"refusal", 400, "Unrecognized device registration. " + secret, dps.CodeCustomAllocationFailed},
		{"JSON message", 403, `{"message":"` + secret + `"}`, dps.CodeCustomAllocationFailed},
		{"200 that is no allocation response", 200, "/usr/bin/dpsd\x00serve\x00--owner-key " + secret, dps.CodeCustomAllocationFailed},
		{"control characters", 400, "\x1b]0;pwned\x07\x1b[2J" + secret, dps.CodeCustomAllocationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ws := newWebhookServer(t, always(tt.status, tt.body))
			ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, nil)
			in := groupInput("dev-1", customGroup(ws.hookURL(), hubA))
			_, err := ts.alloc.Allocate(t.Context(), in)
			if errCode(err) != tt.want {
				t.Fatalf("Allocate: %v; want %d", err, tt.want)
			}
			if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "pwned") {
				t.Errorf("the device's error echoes the webhook's answer: %q", err)
			}
			entries, _ := ts.audit.List(t.Context(), in.RegistrationID)
			if len(entries) != 1 || len(entries[0].Attempts) != 1 {
				t.Fatalf("audit entries = %+v", entries)
			}
			a := entries[0].Attempts[0]
			if a.Body != nil {
				t.Errorf("a refused answer is stored as the body: %s", a.Body)
			}
			if len(a.WebhookText) == 0 || len(a.WebhookText) > alloclog.MaxWebhookTextBytes+2*utf8.UTFMax || strings.Contains(a.WebhookText, "TAIL") || !a.BodyTruncated {
				t.Errorf("webhook text = %q (truncated %v); want at most %d bytes, cut", a.WebhookText, a.BodyTruncated, alloclog.MaxWebhookTextBytes)
			}
			if strings.ContainsRune(a.WebhookText, 0x1b) || strings.ContainsRune(a.WebhookText, 0) {
				t.Errorf("webhook text keeps control characters: %q", a.WebhookText)
			}
		})
	}
}
