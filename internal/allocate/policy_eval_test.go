package allocate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/allocpolicy"
)

// TestAllocationPolicyOutcomes runs in-process policies through the
// allocator: the same outcome rules as a webhook's answer, refusals as
// Azure's 400207 with the policy's reason in the allocation log.
func TestAllocationPolicyOutcomes(t *testing.T) {
	contoso, err := os.ReadFile(filepath.Join("..", "..", "examples", "policies", "contoso.cel"))
	if err != nil {
		t.Fatal(err)
	}
	policies := map[string]string{
		"contoso":    string(contoso),
		"empty-hub":  `{"iotHubHostName": ""}`,
		"not-linked": `{"iotHubHostName": "elsewhere.azure-devices.net"}`,
		"payload":    `{"iotHubHostName": linkedHubs[0], "payload": {"echo": payload.MyDeviceFirmwareVersion, "group": enrollment.enrollmentGroupId}}`,
		"costly":     `{"iotHubHostName": [1,2,3,4,5,6,7,8,9,10].map(a, [1,2,3,4,5,6,7,8,9,10].map(b, [1,2,3,4,5,6,7,8,9,10].map(c, [1,2,3,4,5,6,7,8,9,10].map(d, [1,2,3,4,5,6,7,8,9,10].map(e, [1,2,3,4,5,6,7,8,9,10].map(f, a*b*c*d*e*f)))))).size() > 0 ? linkedHubs[0] : ""}`,
	}
	tests := []struct {
		regID, policy string
		wantHub       string
		wantTags      string
		wantPayload   string
		wantCode      int
		wantLog       string // in the last attempt's error
	}{
		{regID: "breakroom499-contoso-tstrsd-007", policy: "contoso", wantHub: hubA, wantTags: `{"deviceType":"toaster"}`},
		{regID: "mainbuilding167-contoso-hpsd-088", policy: "contoso", wantHub: hubB, wantTags: `{"deviceType":"heatpump"}`},
		{regID: "lobby-contoso-fridge-001", policy: "contoso", wantCode: dps.CodeCustomAllocationFailed, wantLog: "refused the device: Unrecognized device registration."},
		{regID: "dev-1", policy: "empty-hub", wantCode: dps.CodeCustomAllocationIoTHubNotSpecified, wantLog: "names no IoT hub"},
		{regID: "dev-2", policy: "not-linked", wantCode: dps.CodeIoTHubNotLinked, wantLog: "elsewhere"},
		{regID: "dev-3", policy: "payload", wantHub: hubA, wantPayload: `{"echo":"12.0.2.5","group":"contoso-custom-allocated-devices"}`},
		{regID: "dev-4", policy: "costly", wantCode: dps.CodeCustomAllocationFailed, wantLog: "cost limit"},
		{regID: "dev-5", policy: "missing", wantCode: dps.CodeCustomAllocationFailed, wantLog: "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.regID+" "+tt.policy, func(t *testing.T) {
			ts := newTestAllocator(t, hubList{hub(hubA, 1, true, ""), hub(hubB, 1, true, "")}, nil)
			reg := allocpolicy.New(ts.st, 0)
			for name, src := range policies {
				if _, _, err := reg.Put(t.Context(), name, allocpolicy.Definition{Expression: src}, "", ""); err != nil {
					t.Fatalf("Put %s: %v", name, err)
				}
			}
			ts.alloc.policies = reg
			in := groupInput(tt.regID, customGroup("policy:"+tt.policy, hubA, hubB))
			in.DevicePayload = []byte(`{"MyDeviceFirmwareVersion":"12.0.2.5"}`)
			got, err := ts.alloc.Allocate(t.Context(), in)
			if tt.wantCode != 0 {
				if errCode(err) != tt.wantCode {
					t.Fatalf("Allocate = %+v, %v; want %d", got, err, tt.wantCode)
				}
			} else {
				if err != nil {
					t.Fatalf("Allocate: %v", err)
				}
				if got.Hub != tt.wantHub {
					t.Errorf("hub %s; want %s", got.Hub, tt.wantHub)
				}
				if tt.wantTags != "" && (got.InitialTwin == nil || string(got.InitialTwin.Tags) != tt.wantTags) {
					t.Errorf("twin %+v; want tags %s", got.InitialTwin, tt.wantTags)
				}
				if tt.wantPayload != "" {
					assertJSON(t, "payload", got.Payload, tt.wantPayload)
				}
				if got.Note == nil {
					t.Fatal("the policy assigned a hub without a note for the allocation log")
				}
				got.Note.Keep(t.Context()) // as the engine does
			}
			entries, lerr := ts.audit.List(t.Context(), tt.regID)
			if lerr != nil || len(entries) != 1 || len(entries[0].Attempts) != 1 {
				t.Fatalf("allocation log %+v, %v; want one entry of one attempt", entries, lerr)
			}
			e := entries[0]
			if e.WebhookURL != "policy:"+tt.policy || !strings.Contains(string(e.Request), tt.regID) {
				t.Errorf("log entry names %q, request %s", e.WebhookURL, e.Request)
			}
			if tt.wantCode == 0 && (e.Outcome != alloclog.OutcomeAssigned || e.Hub != tt.wantHub || e.Attempts[0].Body == nil) {
				t.Errorf("log entry %+v; want assigned to %s with the policy's answer", e, tt.wantHub)
			}
			if tt.wantCode != 0 && (e.Outcome != alloclog.OutcomeFailed || e.ErrorCode != tt.wantCode || !strings.Contains(e.Attempts[0].Error, tt.wantLog)) {
				t.Errorf("log entry %+v; want failed %d, attempt error containing %q", e, tt.wantCode, tt.wantLog)
			}
			if tt.wantCode != 0 && strings.Contains(err.Error(), "Unrecognized") {
				t.Errorf("the policy's reason reached the device: %v", err)
			}
		})
	}
}
