package allocpolicy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
)

const (
	toasters  = "contoso-toasters-hub-1098.azure-devices.net"
	heatpumps = "contoso-heatpumps-hub-1098.azure-devices.net"
)

func contoso(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "examples", "policies", "contoso.cel"))
	if err != nil {
		t.Fatal(err)
	}
	return string(src)
}

func request(regID string, hubs ...string) *dps.AllocationRequest {
	return &dps.AllocationRequest{
		EnrollmentGroup:      &dps.EnrollmentGroup{EnrollmentGroupID: "contoso-custom-allocated-devices"},
		DeviceRuntimeContext: dps.DeviceRuntimeContext{RegistrationID: regID, Payload: []byte(`{"MyDeviceFirmwareVersion":"12.0.2.5"}`)},
		LinkedHubs:           hubs,
	}
}

// TestContosoPolicy: the shipped policy decides as the tutorial's webhook
// does (examples/contoso-allocator).
func TestContosoPolicy(t *testing.T) {
	p, err := Compile("contoso", contoso(t), 0)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	tests := []struct {
		regID   string
		hubs    []string
		want    string // JSON answer
		refusal string
	}{
		{"breakroom499-contoso-tstrsd-007", []string{toasters, heatpumps},
			`{"iotHubHostName":"` + toasters + `","initialTwin":{"properties":{"desired":{"darknessSetting":"medium","state":"ready"}},"tags":{"deviceType":"toaster"}}}`, ""},
		{"mainbuilding167-contoso-hpsd-088", []string{toasters, heatpumps},
			`{"iotHubHostName":"` + heatpumps + `","initialTwin":{"properties":{"desired":{"state":"on","temperatureSetting":"65"}},"tags":{"deviceType":"heatpump"}}}`, ""},
		{"lobby-contoso-fridge-001", []string{toasters, heatpumps}, "", "Unrecognized device registration."},
		{"breakroom499-contoso-tstrsd-007", []string{heatpumps}, "", "No toasters hub found for the enrollment."},
		{"mainbuilding167-contoso-hpsd-088", nil, "", "No heat pumps hub found for the enrollment."},
	}
	for _, tt := range tests {
		r, err := p.Eval(t.Context(), request(tt.regID, tt.hubs...))
		if err != nil {
			t.Fatalf("%s: Eval: %v", tt.regID, err)
		}
		if r.Refusal != tt.refusal || (tt.want != "" && !jsonEqual(t, r.Response, tt.want)) {
			t.Errorf("%s: %s / refusal %q; want %s / %q", tt.regID, r.Response, r.Refusal, tt.want, tt.refusal)
		}
	}
}

// TestCompileErrors: a bad policy is refused with the compiler's message
// and where it is.
func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name, src    string
		line, column int
		msg          string
	}{
		{"syntax", "{\"iotHubHostName\": linkedHubs[0]", 1, 33, "Syntax error"},
		{"syntax on line 2", "{\"iotHubHostName\":\n  linkedHubs[0]]}", 2, 16, "Syntax error"},
		{"type", `{"iotHubHostName": registrationId + 1}`, 1, 35, "no matching overload"},
		{"unknown variable", `{"iotHubHostName": hubs[0]}`, 1, 20, "undeclared reference"},
		{"not a map", `linkedHubs[0]`, 1, 1, "must be a map"},
		{"empty", "  ", 0, 0, "empty"},
		{"too long", strings.Repeat(" ", MaxSourceBytes+1), 0, 0, "at most"},
	}
	for _, tt := range tests {
		_, err := Compile("p", tt.src, 0)
		var ce *CompileError
		if !errors.As(err, &ce) {
			t.Errorf("%s: Compile = %v; want a CompileError", tt.name, err)
			continue
		}
		if ce.Line != tt.line || ce.Column != tt.column || !strings.Contains(ce.Message, tt.msg) {
			t.Errorf("%s: %d:%d %q; want %d:%d containing %q", tt.name, ce.Line, ce.Column, ce.Message, tt.line, tt.column, tt.msg)
		}
	}
}

// TestEvalErrors: run-time failures say why, and a policy cannot run
// away with the node.
func TestEvalErrors(t *testing.T) {
	tests := []struct {
		name, src, msg string
	}{
		{"cost limit", `{"iotHubHostName": [1,2,3,4,5,6,7,8,9,10].map(a, [1,2,3,4,5,6,7,8,9,10].map(b, [1,2,3,4,5,6,7,8,9,10].map(c, [1,2,3,4,5,6,7,8,9,10].map(d, a*b*c*d)))).size() > 0 ? linkedHubs[0] : ""}`, "cost limit"},
		{"missing key", `{"iotHubHostName": payload.site}`, "no such key"},
		{"unknown member", `{"iotHubHostName": linkedHubs[0], "hub": "x"}`, `"hub"`},
		{"refusal with more", `{"refuse": "no", "iotHubHostName": linkedHubs[0]}`, "nothing else"},
	}
	for _, tt := range tests {
		p, err := Compile("p", tt.src, 5000)
		if err != nil {
			t.Fatalf("%s: Compile: %v", tt.name, err)
		}
		_, err = p.Eval(t.Context(), request("dev-1", toasters))
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: Eval error %v; want one containing %q", tt.name, err, tt.msg)
		}
	}
}

func TestNameOf(t *testing.T) {
	for in, want := range map[string]string{"policy:contoso": "contoso", "POLICY:a": "a", " policy:x ": "x"} {
		if got, ok := NameOf(in); !ok || got != want {
			t.Errorf("NameOf(%q) = %q, %v", in, got, ok)
		}
	}
	if _, ok := NameOf("https://x/y"); ok {
		t.Error("a URL selects a policy")
	}
}

func jsonEqual(t *testing.T, got []byte, want string) bool {
	t.Helper()
	var a, b any
	if json.Unmarshal(got, &a) != nil || json.Unmarshal([]byte(want), &b) != nil {
		return false
	}
	return reflect.DeepEqual(a, b)
}

// BenchmarkContosoEval is one evaluation of the Contoso policy.
func BenchmarkContosoEval(b *testing.B) {
	src, err := os.ReadFile(filepath.Join("..", "..", "examples", "policies", "contoso.cel"))
	if err != nil {
		b.Fatal(err)
	}
	p, err := Compile("contoso", string(src), 0)
	if err != nil {
		b.Fatal(err)
	}
	req := request("breakroom499-contoso-tstrsd-007", toasters, heatpumps)
	for b.Loop() {
		if _, err := p.Eval(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}
