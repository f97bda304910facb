package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// TestLinkedHubCommands drives "dpsd linked-hub" against a real HTTPS
// server on 127.0.0.1 serving the linkedhub and audit handlers behind a SAS
// check.
func TestLinkedHubCommands(t *testing.T) {
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	quiet := slog.New(slog.DiscardHandler)

	key := base64.StdEncoding.EncodeToString([]byte("service-owner-key-for-tests"))
	authorize := func(r *http.Request) error {
		tok, err := sas.Parse(r.Header.Get("Authorization"))
		if err != nil || tok.KeyName != "provisioningserviceowner" || tok.Resource != "127.0.0.1" {
			return dps.Errorf(dps.CodeUnauthorized, "bad token")
		}
		k, _ := base64.StdEncoding.DecodeString(key)
		if !tok.Verify(k) {
			return dps.Errorf(dps.CodeUnauthorized, "bad signature")
		}
		return nil
	}
	reg := linkedhub.New(st)
	const newHubKey = "bmV3LWh1Yi1rZXk="
	hubs := reg.Handler(linkedhub.HandlerOptions{
		Authorize: authorize, Logger: quiet,
		Health: func(string) *admin.LinkedHubHealth {
			return &admin.LinkedHubHealth{State: admin.HubHealthUnhealthy, ConsecutiveFailures: 2, LastError: "connection refused"}
		},
		// The hub accepts only its new key.
		Probe: func(_ context.Context, cs *sas.ConnectionString, _ *x509.CertPool) error {
			if cs.SharedAccessKey != newHubKey {
				return errors.New("401 IotHubUnauthorizedAccess")
			}
			return nil
		},
	})
	log := alloclog.New(st, alloclog.Options{Logger: quiet})
	rec := log.Begin(ctx, "breakroom499-contoso-tstrsd-007", "http://127.0.0.1:8090/api/allocate?****", []byte(`{"linkedHubs":["h"]}`))
	rec.Attempt(ctx, admin.AllocationAttempt{Status: 200, Body: []byte(`{"iotHubHostName":"h"}`), DurationMs: 4})
	rec.Finish(ctx, "h", 0, "")
	mux := http.NewServeMux()
	mux.Handle("/dpsd/linkedHubs", hubs)
	mux.Handle("/dpsd/linkedHubs/", hubs)
	mux.Handle("/dpsd/registrations/", log.Handler(alloclog.HandlerOptions{Authorize: authorize, Logger: quiet}))
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dpsCS := "HostName=" + strings.TrimPrefix(srv.URL, "https://") + ";SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + key
	const hubKey = "aHViLWtleS1zZWNyZXQ="
	hubCS := "HostName=contoso-toasters-hub-1098.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + hubKey

	run := func(args ...string) (string, error) {
		cmd := newLinkedHubCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append(args, "--dps-connection-string", dpsCS, "--ca-file", caFile))
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}

	steps := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{name: "create", args: []string{"create", "--connection-string", hubCS, "--allocation-weight", "3", "--location", "westeurope"},
			want: []string{"contoso-toasters-hub-1098.azure-devices.net", "SharedAccessKey=****", "Allocation weight:", "3", "westeurope"}},
		{name: "create again", args: []string{"create", "--connection-string", hubCS}, wantErr: "409001"},
		{name: "create bad weight", args: []string{"create", "--connection-string", hubCS, "--allocation-weight", "0"}, wantErr: "allocationWeight"},
		{name: "list", args: []string{"list"}, want: []string{"NAME", "contoso-toasters-hub-1098.azure-devices.net", "3", "true", "westeurope"}},
		{name: "update", args: []string{"update", "contoso-toasters-hub-1098.azure-devices.net", "--apply-allocation-policy=false"},
			want: []string{"Apply allocation policy:", "false", "Allocation weight:"}},
		{name: "update nothing", args: []string{"update", "contoso-toasters-hub-1098.azure-devices.net"}, wantErr: "nothing to update"},
		{name: "list shows health", args: []string{"list"}, want: []string{"HEALTH", "unhealthy"}},
		{name: "update CA bundle", args: []string{"update", "contoso-toasters-hub-1098.azure-devices.net", "--hub-ca-file", caFile},
			want: []string{"CA certificates:", "O=Acme Co", "Health:", "unhealthy", "2 failed in a row: connection refused"}},
		{name: "update CA bundle not PEM", args: []string{"update", "contoso-toasters-hub-1098.azure-devices.net", "--hub-ca-file", notPEM}, wantErr: "caCertificates"},
		{name: "rotate to a refused key", args: []string{"rotate-key", "contoso-toasters-hub-1098.azure-devices.net", "--connection-string", hubCS}, wantErr: "old one stays"},
		{name: "rotate key", args: []string{"rotate-key", "contoso-toasters-hub-1098.azure-devices.net", "--connection-string",
			"HostName=contoso-toasters-hub-1098.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + newHubKey},
			want: []string{"SharedAccessKey=****", "Allocation weight:", "3", "O=Acme Co"}},
		{name: "show json", args: []string{"show", "CONTOSO-TOASTERS-HUB-1098.azure-devices.net", "-o", "json"},
			want: []string{`"applyAllocationPolicy": false`, `"allocationWeight": 3`}},
		{name: "delete", args: []string{"delete", "contoso-toasters-hub-1098.azure-devices.net"}},
		{name: "show deleted", args: []string{"show", "contoso-toasters-hub-1098.azure-devices.net"}, wantErr: "404000"},
		{name: "list empty json", args: []string{"list", "-o", "json"}, want: []string{"[]"}},
	}
	for _, s := range steps {
		out, err := run(s.args...)
		if s.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Errorf("%s: err = %v; want it to mention %q", s.name, err, s.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", s.name, err)
			continue
		}
		for _, w := range s.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", s.name, w, out)
			}
		}
		if strings.Contains(out, hubKey) {
			t.Errorf("%s: output shows the hub key:\n%s", s.name, out)
		}
	}

	// The allocation log, as "registration show --allocation-log" will get it.
	cf := &connectFlags{connectionString: dpsCS, caFile: caFile}
	c, err := cf.extClient()
	if err != nil {
		t.Fatal(err)
	}
	r, err := fetchAllocationLog(ctx, c, "breakroom499-contoso-tstrsd-007")
	if err != nil || len(r.Entries) != 1 {
		t.Fatalf("fetchAllocationLog = %+v, %v", r, err)
	}
	var out bytes.Buffer
	if err := printAllocationLog(&out, false, r); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"assigned to h", "ATTEMPT", "200", `{"iotHubHostName":"h"}`, "?****"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("allocation log output lacks %q:\n%s", w, out.String())
		}
	}
	empty, err := fetchAllocationLog(ctx, c, "nobody")
	if err != nil || len(empty.Entries) != 0 {
		t.Fatalf("empty log = %+v, %v", empty, err)
	}
	out.Reset()
	_ = printAllocationLog(&out, false, empty)
	if !strings.Contains(out.String(), "No allocations recorded") {
		t.Errorf("empty log output: %s", out.String())
	}
}
