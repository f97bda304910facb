package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/server"
)

// startServer runs a dpsd in-process on loopback ports with a fresh data
// directory and returns its info.
func startServer(t *testing.T) (dataDir string, info *admin.Info) {
	t.Helper()
	dataDir = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.Start(ctx, server.Config{
		DataDir:   dataDir,
		HostName:  "localhost",
		HTTPSAddr: "127.0.0.1:0",
		MQTTAddr:  "127.0.0.1:0",
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		cancel()
		t.Fatalf("start dpsd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return dataDir, s.Info()
}

// TestCLIAgainstServer drives the client commands against a real dpsd.
func TestCLIAgainstServer(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir, info := startServer(t)
	const group = "contoso-custom-allocated-devices"

	// run runs a command against the server found through --data-dir.
	run := func(args ...string) (string, error) {
		t.Helper()
		return runCLI(t, append(args, "--data-dir", dataDir)...)
	}
	mustRun := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("dpsd %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	decode := func(out string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
	}
	// wantCode checks that err is the service's error with that code, told
	// in one line.
	wantCode := func(err error, code int) {
		t.Helper()
		var de *dps.Error
		if !errors.As(err, &de) || de.ErrorCode != code {
			t.Fatalf("error = %v, want errorCode %d", err, code)
		}
		if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "errorCode") {
			t.Errorf("error %q is not one line with the error code", err)
		}
	}

	// The walk-through's group: custom allocation, generated keys.
	var g dps.EnrollmentGroup
	decode(mustRun("enrollment-group", "create", "--enrollment-group-id", group,
		"--allocation-policy", "custom", "--webhook-url", "https://127.0.0.1:1/api/alloc",
		"--iot-hubs", "contoso-toasters-hub-1098.example,contoso-heatpumps-hub-1098.example", "-o", "json"), &g)
	if g.Attestation == nil || g.Attestation.SymmetricKey == nil || len(g.Attestation.SymmetricKey.PrimaryKey) != 88 {
		t.Fatalf("created group has no generated 64-byte keys: %+v", g.Attestation)
	}
	primary := g.Attestation.SymmetricKey.PrimaryKey

	// compute-device-key reads the group key from the service.
	const device = "breakroom499-contoso-tstrsd-007"
	want, err := sas.DeriveDeviceKey(primary, device)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRun("compute-device-key", "--enrollment-group-id", group, "--registration-id", device); got != want+"\n" {
		t.Errorf("compute-device-key = %q, want %q", got, want)
	}

	// show hides the keys unless asked.
	var shown dps.EnrollmentGroup
	decode(mustRun("enrollment-group", "show", "--enrollment-group-id", group, "-o", "json"), &shown)
	if shown.Attestation == nil || shown.Attestation.SymmetricKey != nil {
		t.Errorf("show without --show-keys: attestation %+v", shown.Attestation)
	}

	// update changes what it is told and keeps the keys.
	mustRun("enrollment-group", "update", "--enrollment-group-id", group, "--provisioning-status", "disabled")
	decode(mustRun("enrollment-group", "show", "--enrollment-group-id", group, "--show-keys", "-o", "json"), &shown)
	if shown.ProvisioningStatus != dps.ProvisioningDisabled || shown.Attestation.SymmetricKey == nil ||
		shown.Attestation.SymmetricKey.PrimaryKey != primary {
		t.Errorf("after update: status %q, attestation %+v", shown.ProvisioningStatus, shown.Attestation)
	}
	if out := mustRun("enrollment-group", "list"); !strings.Contains(out, group) || !strings.Contains(out, "disabled") {
		t.Errorf("group list:\n%s", out)
	}

	// Individual enrollments.
	const key1, key2 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
	mustRun("enrollment", "create", "--registration-id", "dev-1", "--primary-key", key1, "--secondary-key", key2)
	mustRun("enrollment", "create", "--registration-id", "dev-2", "--device-id", "second")
	mustRun("enrollment", "create", "--registration-id", "dev-3", "--provisioning-status", "disabled")
	var list []dps.IndividualEnrollment
	decode(mustRun("enrollment", "list", "--top", "2", "-o", "json"), &list)
	if len(list) != 2 {
		t.Errorf("list --top 2 gave %d enrollments", len(list))
	}
	decode(mustRun("enrollment", "list", "-o", "json"), &list)
	if len(list) != 3 {
		t.Errorf("list gave %d enrollments", len(list))
	}
	if out := mustRun("enrollment", "list"); !strings.Contains(out, "REGISTRATION ID") || !strings.Contains(out, "second") {
		t.Errorf("list table:\n%s", out)
	}

	// Etags: a stale etag is refused, the current one accepted.
	_, err = run("enrollment", "update", "--registration-id", "dev-1", "--device-id", "x", "--etag", `"stale"`)
	wantCode(err, dps.CodePreconditionFailed)
	var e dps.IndividualEnrollment
	decode(mustRun("enrollment", "show", "--registration-id", "dev-1", "-o", "json"), &e)
	decode(mustRun("enrollment", "update", "--registration-id", "dev-1", "--device-id", "first", "--etag", e.ETag, "-o", "json"), &e)
	if e.DeviceID != "first" || e.Attestation.SymmetricKey == nil || e.Attestation.SymmetricKey.PrimaryKey != key1 {
		t.Errorf("after update: %+v %+v", e, e.Attestation)
	}

	// Create does not overwrite.
	_, err = run("enrollment", "create", "--registration-id", "dev-1")
	wantCode(err, dps.CodeConflict)

	mustRun("enrollment", "delete", "--registration-id", "dev-1")
	_, err = run("enrollment", "show", "--registration-id", "dev-1")
	wantCode(err, dps.CodeEnrollmentNotFound)

	// Registrations: nobody has registered yet.
	if out := mustRun("registration", "list", "--enrollment-group-id", group, "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("registration list = %s", out)
	}
	_, err = run("registration", "show", "--registration-id", device)
	var de *dps.Error
	if !errors.As(err, &de) || de.Status() != 404 {
		t.Errorf("registration show of an unregistered device: %v", err)
	}

	// The connection string and an explicit CA work without the data dir.
	out, err := runCLI(t, "enrollment", "list", "--connection-string", info.ServiceConnectionString,
		"--ca-file", info.CACertFile, "-o", "json")
	if err != nil {
		t.Fatalf("with --connection-string: %v", err)
	}
	decode(out, &list)
	if len(list) != 2 {
		t.Errorf("list gave %d enrollments after a delete", len(list))
	}

	mustRun("enrollment-group", "delete", "--enrollment-group-id", group, "--etag", shown.ETag)
	_, err = run("enrollment-group", "show", "--enrollment-group-id", group)
	wantCode(err, dps.CodeEnrollmentGroupNotFound)
}
