package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const (
	toasters  = "contoso-toasters-hub-1098.azure-devices.net"
	heatpumps = "contoso-heatpumps-hub-1098.azure-devices.net"
)

func newServer(t *testing.T, code string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(&allocator{log: slog.New(slog.DiscardHandler), code: code})
	t.Cleanup(srv.Close)
	return srv
}

func TestPolicy(t *testing.T) {
	both := `["` + toasters + `","` + heatpumps + `"]`
	req := func(regID, hubs string) string {
		return `{"enrollmentGroup":{"enrollmentGroupId":"contoso-custom-allocated-devices","attestation":{"type":"symmetricKey"}},
			"deviceRuntimeContext":{"registrationId":"` + regID + `","symmetricKey":{},"payload":{"MyDeviceFirmwareVersion":"12.0.2.5"}},
			"linkedHubs":` + hubs + `}`
	}
	tests := []struct {
		name       string
		method     string
		query      string
		body       string
		wantStatus int
		wantHub    string
		wantTwin   string // JSON of initialTwin
		wantText   string // 4xx body
	}{
		{name: "toaster", body: req("breakroom499-contoso-tstrsd-007", both), wantStatus: 200, wantHub: toasters,
			wantTwin: `{"tags":{"deviceType":"toaster"},"properties":{"desired":{"darknessSetting":"medium","state":"ready"}}}`},
		{name: "heat pump", body: req("mainbuilding167-contoso-hpsd-088", both), wantStatus: 200, wantHub: heatpumps,
			wantTwin: `{"tags":{"deviceType":"heatpump"},"properties":{"desired":{"state":"on","temperatureSetting":"65"}}}`},
		{name: "unrecognized", body: req("lobby-contoso-fridge-001", both), wantStatus: 400, wantText: "Unrecognized device registration."},
		{name: "no registration id", body: req("", both), wantStatus: 400, wantText: "Registration ID not provided for the device."},
		{name: "no runtime context", body: `{"linkedHubs":` + both + `}`, wantStatus: 400, wantText: "Registration ID not provided for the device."},
		{name: "no linked hubs", body: req("breakroom499-contoso-tstrsd-007", `[]`), wantStatus: 400, wantText: "No hub group defined for the enrollment."},
		{name: "null linked hubs", body: req("breakroom499-contoso-tstrsd-007", `null`), wantStatus: 400, wantText: "No hub group defined for the enrollment."},
		{name: "no toasters hub", body: req("breakroom499-contoso-tstrsd-007", `["`+heatpumps+`"]`), wantStatus: 400, wantText: "No toasters hub found for the enrollment."},
		{name: "no heat pumps hub", body: req("mainbuilding167-contoso-hpsd-088", `["`+toasters+`"]`), wantStatus: 400, wantText: "No heat pumps hub found for the enrollment."},
		{name: "not JSON", body: `hello`, wantStatus: 400, wantText: "not an allocation request"},
		{name: "GET", method: http.MethodGet, wantStatus: 405},
	}
	srv := newServer(t, "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			r, err := http.NewRequestWithContext(t.Context(), method, srv.URL+"/api/allocate"+tt.query, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			r.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d; want %d (%s)", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus != 200 {
				if !strings.Contains(string(body), tt.wantText) {
					t.Errorf("body = %q; want it to contain %q", body, tt.wantText)
				}
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			var got struct {
				Hub  string          `json:"iotHubHostName"`
				Twin json.RawMessage `json:"initialTwin"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("answer %s: %v", body, err)
			}
			if got.Hub != tt.wantHub {
				t.Errorf("hub = %q; want %q", got.Hub, tt.wantHub)
			}
			if string(got.Twin) != tt.wantTwin {
				t.Errorf("initialTwin = %s; want %s", got.Twin, tt.wantTwin)
			}
		})
	}
}

func TestFunctionKey(t *testing.T) {
	srv := newServer(t, "k3y")
	body := `{"deviceRuntimeContext":{"registrationId":"a-contoso-hpsd-088"},"linkedHubs":["` + heatpumps + `"]}`
	tests := []struct {
		query      string
		wantStatus int
	}{
		{"", 401},
		{"?code=wrong", 401},
		{"?code=k3y", 200},
	}
	for _, tt := range tests {
		resp, err := http.Post(srv.URL+"/api/allocate"+tt.query, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.wantStatus {
			t.Errorf("query %q: status %d; want %d", tt.query, resp.StatusCode, tt.wantStatus)
		}
	}
}
