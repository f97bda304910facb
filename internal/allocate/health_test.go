package allocate

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

// healthMap is what the health checks found, by hub name.
type healthMap map[string]string

func (m healthMap) Health(host string) admin.LinkedHubHealth {
	if s, ok := m[host]; ok {
		return admin.LinkedHubHealth{State: s}
	}
	return admin.LinkedHubHealth{State: admin.HubHealthUnknown}
}

// TestUnhealthyHubsSkipped: hashed and geoLatency allocation leave out
// unhealthy hubs while another candidate is not unhealthy; with every
// candidate unhealthy, or skipping turned off, they keep them all and say
// so; static and custom allocation are not changed. The allocation log
// shows every candidate's health.
func TestUnhealthyHubsSkipped(t *testing.T) {
	hubs := hubList{hub(hubA, 1, true, "westeurope"), hub(hubB, 1, true, "eastus")}
	// A registration id that hashed allocation gives to hubA when both
	// are candidates.
	var toA string
	for _, id := range []string{"d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"} {
		if Hashed(id, hubs).Name == hubA {
			toA = id
			break
		}
	}
	group := func(policy string, named ...string) *dps.EnrollmentGroup {
		g := customGroup("", named...)
		g.AllocationPolicy, g.CustomAllocationDefinition = policy, nil
		return g
	}
	okHub := `{"iotHubHostName":"` + hubA + `"}`
	ws := newWebhookServer(t, always(200, okHub))
	tests := []struct {
		name       string
		health     healthMap
		keep       bool // --allocation-skip-unhealthy=false
		in         *provision.AllocationInput
		wantHub    string
		wantReason string
		wantSkip   string // candidate logged as skipped
	}{
		{name: "all healthy", health: healthMap{hubA: admin.HubHealthHealthy, hubB: admin.HubHealthHealthy},
			in: groupInput(toA, group(dps.AllocationHashed)), wantHub: hubA, wantReason: "hashed: weighted"},
		{name: "unknown counts as healthy", health: healthMap{},
			in: groupInput(toA, group(dps.AllocationHashed)), wantHub: hubA},
		{name: "hashed skips the unhealthy hub", health: healthMap{hubA: admin.HubHealthUnhealthy, hubB: admin.HubHealthHealthy},
			in: groupInput(toA, group(dps.AllocationHashed)), wantHub: hubB, wantReason: "skipped as unhealthy: " + hubA, wantSkip: hubA},
		{name: "geoLatency skips the near hub when it is unhealthy", health: healthMap{hubA: admin.HubHealthUnhealthy},
			in: func() *provision.AllocationInput {
				in := groupInput(toA, group(dps.AllocationGeoLatency))
				in.RemoteAddr = "10.1.0.1:1000"
				return in
			}(), wantHub: hubB, wantReason: "skipped as unhealthy: " + hubA, wantSkip: hubA},
		{name: "every candidate unhealthy", health: healthMap{hubA: admin.HubHealthUnhealthy, hubB: admin.HubHealthUnhealthy},
			in: groupInput(toA, group(dps.AllocationHashed)), wantHub: hubA, wantReason: "every candidate is unhealthy"},
		{name: "skipping off", health: healthMap{hubA: admin.HubHealthUnhealthy}, keep: true,
			in: groupInput(toA, group(dps.AllocationHashed)), wantHub: hubA, wantReason: "unhealthy candidates kept"},
		{name: "static is not changed", health: healthMap{hubA: admin.HubHealthUnhealthy},
			in: groupInput(toA, group(dps.AllocationStatic, hubA)), wantHub: hubA, wantReason: "static"},
		{name: "custom sends every hub to the webhook", health: healthMap{hubA: admin.HubHealthUnhealthy},
			in: groupInput(toA, customGroup(ws.hookURL())), wantHub: hubA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestAllocator(t, hubs, nil)
			ts.alloc.health, ts.alloc.skipUnhealthy = tt.health, !tt.keep
			ts.alloc.geo = newGeoMap([]NetworkLocation{{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Locations: []string{"westeurope", "eastus"}}})
			got, err := ts.alloc.Allocate(t.Context(), tt.in)
			if err != nil || got.Hub != tt.wantHub {
				t.Fatalf("Allocate = %+v, %v; want %s", got, err, tt.wantHub)
			}
			if got.Note != nil {
				got.Note.Keep(t.Context()) // as the engine does
			}
			entries, err := ts.audit.List(t.Context(), tt.in.RegistrationID)
			if err != nil || len(entries) != 1 {
				t.Fatalf("allocation log = %+v, %v; want one entry", entries, err)
			}
			e := entries[0]
			if !strings.Contains(e.Reason, tt.wantReason) {
				t.Errorf("reason %q, want %q in it", e.Reason, tt.wantReason)
			}
			if len(e.Candidates) != 2 && !strings.HasPrefix(tt.name, "static") {
				t.Fatalf("candidates %+v, want both hubs", e.Candidates)
			}
			for _, c := range e.Candidates {
				if c.Health != tt.health.Health(c.Name).State {
					t.Errorf("candidate %s logged as %q, want %q", c.Name, c.Health, tt.health.Health(c.Name).State)
				}
				if c.Skipped != (c.Name == tt.wantSkip) {
					t.Errorf("candidate %s skipped=%v", c.Name, c.Skipped)
				}
			}
		})
	}
}
