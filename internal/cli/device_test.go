package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/server"
)

// fakeDeviceAPI answers register with 202 assigning and the first poll with
// the scripted final body; it writes a data directory describing itself.
func fakeDeviceAPI(t *testing.T, final string) (dataDir string) {
	t.Helper()
	var polls atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		id := strings.Split(r.URL.Path, "/")[3]
		switch {
		case r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/register"):
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintf(w, `{"operationId":"op-1","status":"assigning"}`)
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/operations/op-1"):
			if polls.Add(1) == 1 {
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(http.StatusAccepted)
				fmt.Fprintf(w, `{"operationId":"op-1","status":"assigning","registrationState":{"registrationId":%q,"status":"assigning"}}`, id)
				return
			}
			io.WriteString(w, strings.ReplaceAll(final, "ID", id))
		default:
			http.NotFound(w, r)
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := srv.Listener.Addr().String()
	if err := server.WriteInfo(dir, &admin.Info{
		IDScope: "0ne00ABC123", CACertFile: ca, HostName: "example.com",
		HTTPSAddr: addr, MQTTAddr: addr, HTTPSEndpoint: "https://example.com",
	}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func runDeviceCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := NewRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	setArgs(root, args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

const groupKeyForTests = "oiK77Oy7rBw8YB6IS6ukRChAw+Yq6GC61RMrPLSTiOOtdI+XDu0LmLuNm11p+qv2I+adqGUdZHm46zXAQdZoOA=="

func TestDeviceProvision(t *testing.T) {
	const assigned = `{"operationId":"op-1","status":"assigned","registrationState":{"registrationId":"ID","deviceId":"ID",` +
		`"assignedHub":"contoso-toasters-hub-1098.azure-devices.net","status":"assigned","payload":{"hello":"device"}}}`
	const failed = `{"operationId":"op-1","status":"failed","registrationState":{"registrationId":"ID","status":"failed",` +
		`"errorCode":400209,"errorMessage":"Custom allocation failed with status code: 401"}}`
	tests := []struct {
		name       string
		final      string
		extra      []string
		wantOut    []string
		wantErrOut string
		wantExit   bool
	}{
		{
			name:  "assigned",
			final: assigned,
			wantOut: []string{
				"Provisioning API Version: 2019-03-31\n",
				"Registering Device\n",
				"Provisioning Status: PROV_DEVICE_REG_STATUS_CONNECTED\n",
				"Provisioning Status: PROV_DEVICE_REG_STATUS_ASSIGNING\n",
				"Registration Information received from service: contoso-toasters-hub-1098.azure-devices.net, deviceId: breakroom499-contoso-tstrsd-007\n",
				`Provisioning payload received from service: {"hello":"device"}`,
			},
		},
		{
			name:    "json output",
			final:   assigned,
			extra:   []string{"-o", "json"},
			wantOut: []string{`"assignedHub": "contoso-toasters-hub-1098.azure-devices.net"`, `"deviceId": "breakroom499-contoso-tstrsd-007"`},
		},
		{
			name:       "failed",
			final:      failed,
			wantErrOut: "Failure registering device: registration failed, errorCode 400209: Custom allocation failed with status code: 401",
			wantExit:   true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeDeviceAPI(t, tc.final)
			args := append([]string{"device", "provision", "--data-dir", dir,
				"--registration-id", "breakroom499-contoso-tstrsd-007", "--group-key", groupKeyForTests,
				"--payload", `{"MyDeviceFirmwareVersion":"12.0.2.5"}`}, tc.extra...)
			out, errOut, err := runDeviceCLI(t, args...)
			var ee *exitError
			if tc.wantExit != errors.As(err, &ee) {
				t.Fatalf("err = %v, want exit error %v\nstdout:\n%s\nstderr:\n%s", err, tc.wantExit, out, errOut)
			}
			if !tc.wantExit && err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if !strings.Contains(errOut, tc.wantErrOut) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantErrOut, errOut)
			}
			if tc.name == "json output" {
				var v map[string]any
				if err := json.Unmarshal([]byte(out), &v); err != nil {
					t.Errorf("-o json printed no JSON: %v\n%s", err, out)
				}
			}
		})
	}
}

func TestDeviceProvisionFlagErrors(t *testing.T) {
	dir := fakeDeviceAPI(t, "{}")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"both keys", []string{"--symmetric-key", "eA==", "--group-key", "eA=="}, "exactly one"},
		{"no key", nil, "exactly one"},
		{"bad payload", []string{"--symmetric-key", "eA==", "--payload", "{"}, "not valid JSON"},
		{"missing data dir", []string{"--symmetric-key", "eA==", "--data-dir", filepath.Join(dir, "missing")}, "read dpsd info"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"device", "provision", "--registration-id", "d1", "--data-dir", dir}, tc.args...)
			_, _, err := runDeviceCLI(t, args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestBenchCommand(t *testing.T) {
	assigned := `{"operationId":"op-1","status":"assigned","registrationState":{"registrationId":"ID","deviceId":"ID","assignedHub":"hub","status":"assigned"}}`
	dir := fakeDeviceAPI(t, assigned)
	out, errOut, err := runDeviceCLI(t, "bench", "--data-dir", dir, "--group-key", groupKeyForTests,
		"--registrations", "6", "--concurrency", "2", "-o", "json")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut)
	}
	var res struct {
		Succeeded int                `json:"succeeded"`
		Latency   map[string]float64 `json:"latencyMs"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Succeeded != 6 || res.Latency["p99"] <= 0 {
		t.Errorf("result %+v (%v):\n%s", res, err, out)
	}

	// Load never goes to a non-loopback host without --allow-remote.
	_, _, err = runDeviceCLI(t, "bench", "--id-scope", "s", "--provisioning-host", "192.0.2.1", "--group-key", groupKeyForTests,
		"--registrations", "1")
	if err == nil || !strings.Contains(err.Error(), "not a loopback") {
		t.Errorf("remote target: err = %v", err)
	}
}
