package allocate

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/provision"
)

// TestAllocationLogWhy: every allocation leaves a "why" in the allocation
// log, not only webhooks: the policy, the candidates with their weights
// and locations, the reason, and for a device that had a hub, what
// reprovisioning does.
func TestAllocationLogWhy(t *testing.T) {
	hubs := hubList{hub(hubA, 3, true, "westeurope"), hub(hubB, 1, true, "eastus")}
	group := func(policy string, named ...string) *dps.EnrollmentGroup {
		g := customGroup("", named...)
		g.AllocationPolicy, g.CustomAllocationDefinition = policy, nil
		return g
	}
	okHub := `{"iotHubHostName":"` + hubB + `"}`
	ws := newWebhookServer(t, always(200, okHub))
	tests := []struct {
		name       string
		in         *provision.AllocationInput
		wantHub    string
		wantReason string
		wantMove   string
		wantCode   int
	}{
		{name: "hashed", in: groupInput("dev-hashed", group(dps.AllocationHashed)), wantReason: "weighted rendezvous hashing of the registration id over 2 candidates"},
		{name: "static", in: groupInput("dev-static", group(dps.AllocationStatic, hubB)), wantHub: hubB, wantReason: "static: the one hub"},
		{name: "static with two hubs", in: groupInput("dev-static2", group(dps.AllocationStatic, hubA, hubB)), wantCode: dps.CodeNoHubForAllocation, wantReason: "exactly one"},
		{name: "geoLatency", in: func() *provision.AllocationInput {
			in := groupInput("dev-geo", group(dps.AllocationGeoLatency))
			in.RemoteAddr = "10.2.3.4:5000"
			return in
		}(), wantHub: hubB, wantReason: "10.2.3.4:5000 is in a network whose locations are, nearest first, eastus"},
		{name: "custom", in: groupInput("dev-custom", customGroup(ws.hookURL(), hubA, hubB)), wantHub: hubB},
		{name: "reprovision move", in: func() *provision.AllocationInput {
			in := groupInput("dev-move", group(dps.AllocationStatic, hubB))
			in.Previous = &dps.DeviceRegistrationState{AssignedHub: hubA, DeviceID: "dev-move", Status: dps.StatusAssigned}
			return in
		}(), wantHub: hubB, wantMove: "moves from " + hubA + " to " + hubB + "; twin and device data migrated"},
		{name: "reprovision reset", in: func() *provision.AllocationInput {
			g := group(dps.AllocationStatic, hubB)
			g.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: false}
			in := groupInput("dev-reset", g)
			in.Previous = &dps.DeviceRegistrationState{AssignedHub: hubA, DeviceID: "dev-reset", Status: dps.StatusAssigned}
			return in
		}(), wantHub: hubB, wantMove: "twin reset to the enrollment's initial twin"},
		{name: "never reprovision", in: func() *provision.AllocationInput {
			g := group(dps.AllocationStatic, hubB)
			g.ReprovisionPolicy = &dps.ReprovisionPolicy{UpdateHubAssignment: false}
			in := groupInput("dev-never", g)
			in.Previous = &dps.DeviceRegistrationState{AssignedHub: hubA, DeviceID: "dev-never", Status: dps.StatusAssigned}
			return in
		}(), wantHub: hubA, wantReason: "never moves the device", wantMove: "never reprovision: the device stays in " + hubA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestAllocator(t, hubs, nil)
			ts.alloc.geo = newGeoMap([]NetworkLocation{{netip.MustParsePrefix("10.2.0.0/16"), []string{"eastus", "westeurope"}}})
			got, err := ts.alloc.Allocate(t.Context(), tt.in)
			if tt.wantCode != 0 {
				if errCode(err) != tt.wantCode {
					t.Fatalf("Allocate = %v; want %d", err, tt.wantCode)
				}
			} else if err != nil || (tt.wantHub != "" && got.Hub != tt.wantHub) {
				t.Fatalf("Allocate = %+v, %v; want %s", got, err, tt.wantHub)
			}
			if got != nil && tt.name != "custom" {
				// An allocation that calls nothing leaves its entry to the
				// engine, which keeps it with the registration; a webhook's
				// entry is written as its calls are made.
				if got.Note == nil {
					t.Fatal("Allocate assigned a hub without a note of why")
				}
				got.Note.Keep(t.Context())
			}
			entries, err := ts.audit.List(t.Context(), tt.in.RegistrationID)
			if err != nil || len(entries) != 1 {
				t.Fatalf("allocation log = %+v, %v; want one entry", entries, err)
			}
			e := entries[0]
			policy, _, _, _, _ := tt.in.Policy()
			if e.AllocationPolicy != policy || !strings.Contains(e.Reason, tt.wantReason) || !strings.Contains(e.Reprovision, tt.wantMove) {
				t.Errorf("entry: policy %q reason %q reprovision %q; want %s, %q, %q", e.AllocationPolicy, e.Reason, e.Reprovision, policy, tt.wantReason, tt.wantMove)
			}
			if tt.wantCode == 0 {
				if e.Outcome != alloclog.OutcomeAssigned || e.Hub != got.Hub || len(e.Candidates) == 0 {
					t.Errorf("entry: %+v; want assigned to %s with its candidates", e, got.Hub)
				}
			} else if e.Outcome != alloclog.OutcomeFailed || e.ErrorCode != tt.wantCode {
				t.Errorf("entry: %+v; want failed %d", e, tt.wantCode)
			}
			if tt.name == "hashed" && (len(e.Candidates) != 2 || e.Candidates[0].AllocationWeight != 3 || e.Candidates[0].Location != "westeurope") {
				t.Errorf("hashed candidates %+v; want both hubs with weight and location", e.Candidates)
			}
			if tt.name == "custom" && (e.WebhookURL == "" || len(e.Attempts) != 1 || len(e.Candidates) != 2) {
				t.Errorf("custom entry %+v; want the webhook call and the candidates", e)
			}
		})
	}
}
