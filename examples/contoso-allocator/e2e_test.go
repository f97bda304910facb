package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// TestThroughDPSD runs the tutorial's allocation end to end on dpsd's side:
// hubs linked by connection string in a real store, the tutorial's
// enrollment group, dpsd's webhook client calling this webhook over HTTP on
// 127.0.0.1, and the audit trail.
func TestThroughDPSD(t *testing.T) {
	ctx := t.Context()
	quiet := slog.New(slog.DiscardHandler)
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })

	hubs := linkedhub.New(st)
	for _, cs := range []string{
		"HostName=" + toasters + ";SharedAccessKeyName=iothubowner;SharedAccessKey=dG9hc3RlcnM=",
		"HostName=" + heatpumps + ";SharedAccessKeyName=iothubowner;SharedAccessKey=aGVhdHB1bXBz",
	} {
		if _, err := hubs.Create(ctx, admin.LinkedHubDefinition{ConnectionString: cs}); err != nil {
			t.Fatal(err)
		}
	}
	log := alloclog.New(st, alloclog.Options{Logger: quiet})
	wh, err := allocate.NewWebhook(allocate.WebhookOptions{Audit: log, Logger: quiet,
		Sleep: func(context.Context, time.Duration) error { return errors.New("no retries expected") }})
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := allocate.New(allocate.Options{Hubs: hubs, Webhook: wh, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}

	srv := newServer(t, "tutorial-key")
	group := &dps.EnrollmentGroup{
		EnrollmentGroupID: "contoso-custom-allocated-devices",
		Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey, SymmetricKey: &dps.SymmetricKeyAttestation{
			PrimaryKey:   "oiK77Oy7rBw8YB6IS6ukRChAw+Yq6GC61RMrPLSTiOOtdI+XDu0LmLuNm11p+qv2I+adqGUdZHm46zXAQdZoOA==",
			SecondaryKey: "ctsffbZ6vUuNbh2ZTN0WfmBRdtpkGpXrqAhIkTsCkALmp1VwN11Zlw02yfSrCzLr3vJmrUrX47ykM1JqYaL4dg==",
		}},
		ProvisioningStatus:         dps.ProvisioningEnabled,
		AllocationPolicy:           dps.AllocationCustom,
		IoTHubs:                    []string{toasters, heatpumps},
		ReprovisionPolicy:          &dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true},
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: srv.URL + "/api/allocate?code=tutorial-key", APIVersion: "2021-10-01"},
	}
	payload := json.RawMessage(`{"MyDeviceFirmwareVersion":"12.0.2.5","MyDeviceProvisioningVersion":"1.0.0.0"}`)

	tests := []struct {
		regID    string
		wantHub  string
		wantTags string
		wantCode int
	}{
		{regID: "breakroom499-contoso-tstrsd-007", wantHub: toasters, wantTags: `{"deviceType":"toaster"}`},
		{regID: "mainbuilding167-contoso-hpsd-088", wantHub: heatpumps, wantTags: `{"deviceType":"heatpump"}`},
		{regID: "lobby-contoso-fridge-001", wantCode: dps.CodeCustomAllocationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.regID, func(t *testing.T) {
			in := &provision.AllocationInput{RegistrationID: tt.regID, Group: group,
				AttestationType: dps.AttestationSymmetricKey, DevicePayload: payload}
			got, err := alloc.Allocate(ctx, in)
			entries, lerr := log.List(ctx, tt.regID)
			if lerr != nil || len(entries) != 1 {
				t.Fatalf("audit = %v, %v; want one entry", entries, lerr)
			}
			e := entries[0]
			if strings.Contains(string(e.Request), "tutorial-key") || strings.Contains(string(e.Request), "oiK77") {
				t.Errorf("audited request holds a secret: %s", e.Request)
			}
			if tt.wantCode != 0 {
				var de *dps.Error
				if !errors.As(err, &de) || de.ErrorCode != tt.wantCode || de.Message != "Custom allocation failed with status code: 400" {
					t.Fatalf("err = %v; want %d with status code 400", err, tt.wantCode)
				}
				if e.Outcome != admin.OutcomeFailed || len(e.Attempts) != 1 || !strings.Contains(e.Attempts[0].WebhookText, "Unrecognized device registration.") {
					t.Errorf("audit entry = %+v", e)
				}
				return
			}
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			if got.Hub != tt.wantHub || got.InitialTwin == nil || string(got.InitialTwin.Tags) != tt.wantTags {
				t.Errorf("allocation = %+v (twin %+v); want %s with tags %s", got, got.InitialTwin, tt.wantHub, tt.wantTags)
			}
			if e.Outcome != admin.OutcomeAssigned || e.Hub != tt.wantHub || e.Attempts[0].Status != 200 {
				t.Errorf("audit entry = %+v", e)
			}
		})
	}
}
