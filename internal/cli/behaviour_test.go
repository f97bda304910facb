package cli

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/server"
)

// TestUnknownSubcommands: a word a command group does not know is an
// error, with suggestions, however it is followed.
func TestUnknownSubcommands(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr []string // nil: no error
	}{
		{[]string{"enrollment-group", "foo"}, []string{`unknown command "foo" for "dpsd enrollment-group"`}},
		{[]string{"enrollment", "shw", "--registration-id", "x"}, []string{`unknown command "shw" for "dpsd enrollment"`, "Did you mean this?\n\tshow"}},
		{[]string{"hub", "device", "lst"}, []string{`unknown command "lst" for "dpsd hub device"`, "list"}},
		{[]string{"nosuch"}, []string{`unknown command "nosuch" for "dpsd"`}},
		{[]string{"enrollment"}, nil}, // a group alone prints its help
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if tc.wantErr == nil {
				if err != nil || !strings.Contains(out, "Available Commands") {
					t.Errorf("err = %v, out:\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; out:\n%s", out)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := runCLI(t, args...)
		if err != nil || !strings.HasPrefix(out, "dpsd ") || !strings.Contains(out, "commit ") {
			t.Errorf("dpsd %v = %q, %v", args, out, err)
		}
	}
	buildVersion, buildCommit = "v1.2.3", "abc123"
	defer func() { buildVersion, buildCommit = "", "" }()
	if out, _ := runCLI(t, "--version"); out != "dpsd v1.2.3 (commit abc123)\n" {
		t.Errorf("release build: %q", out)
	}
}

func TestHoistGlobalFlags(t *testing.T) {
	tests := []struct{ in, want []string }{
		{[]string{"--data-dir", "d", "enrollment", "list"}, []string{"enrollment", "list", "--data-dir", "d"}},
		{[]string{"--data-dir=d", "-o", "json", "enrollment", "list", "--top", "1"}, []string{"enrollment", "list", "--top", "1", "--data-dir=d", "-o", "json"}},
		{[]string{"enrollment", "list", "--data-dir", "d"}, []string{"enrollment", "list", "--data-dir", "d"}},
		{[]string{"--version"}, []string{"--version"}},
		{[]string{"--data-dir", "d"}, []string{"--data-dir", "d"}},
		{[]string{"-o", "json", "device", "provision", "--", "x"}, []string{"device", "provision", "-o", "json", "--", "x"}},
	}
	for _, tc := range tests {
		if got := hoistGlobalFlags(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("hoistGlobalFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestCLIBehaviourAgainstServer covers the fixes that need a service.
func TestCLIBehaviourAgainstServer(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir, _, _ := startLoggingServer(t, "127.0.12.2")

	// Global flags before the command.
	if _, err := runCLI(t, "enrollment", "create", "--registration-id", "dev1", "--data-dir", dataDir); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "--data-dir", dataDir, "-o", "json", "enrollment", "list")
	if err != nil || !strings.Contains(out, `"registrationId": "dev1"`) {
		t.Errorf("global flags before the command: %v\n%s", err, out)
	}

	// Deleting what does not exist is 404, with or without an etag.
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"enrollment", "delete", "--registration-id", "nobody"}, dps.CodeEnrollmentNotFound},
		{[]string{"enrollment", "delete", "--registration-id", "nobody", "--etag", "abc"}, dps.CodeEnrollmentNotFound},
		{[]string{"enrollment-group", "delete", "--enrollment-group-id", "nogroup"}, dps.CodeEnrollmentGroupNotFound},
		{[]string{"registration", "delete", "--registration-id", "nobody"}, dps.CodeRegistrationNotFound},
	} {
		_, err := runCLI(t, append(tc.args, "--data-dir", dataDir)...)
		var de *dps.Error
		if !errors.As(err, &de) || de.ErrorCode != tc.code {
			t.Errorf("dpsd %s: %v, want errorCode %d", strings.Join(tc.args, " "), err, tc.code)
		}
	}
	// A stale etag on one that exists is still 412.
	_, err = runCLI(t, "enrollment", "delete", "--registration-id", "dev1", "--etag", "stale", "--data-dir", dataDir)
	var de *dps.Error
	if !errors.As(err, &de) || de.ErrorCode != dps.CodePreconditionFailed {
		t.Errorf("delete with a stale etag: %v, want 412001", err)
	}

	// info says whether the node runs.
	out, err = runCLI(t, "info", "--data-dir", dataDir)
	if err != nil || !strings.Contains(out, "State:                      running") {
		t.Errorf("info of a running node: %v\n%s", err, out)
	}
}

func TestInfoOfAStoppedNode(t *testing.T) {
	dir := t.TempDir()
	if err := server.WriteInfo(dir, &admin.Info{IDScope: "0ne00ABC123", HTTPSAddr: "127.0.12.3:443"}); err != nil {
		t.Fatal(err)
	}
	// A lock file left behind by a stopped node holds no lock.
	if err := os.WriteFile(filepath.Join(dir, "dpsd.lock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "info", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "State:                      stopped") {
		t.Errorf("info of a stopped node: %v\n%s", err, out)
	}
	out, err = runCLI(t, "info", "--data-dir", dir, "-o", "json")
	if err != nil || !strings.Contains(out, `"running": false`) || !strings.Contains(out, `"idScope": "0ne00ABC123"`) {
		t.Errorf("info -o json of a stopped node: %v\n%s", err, out)
	}
}

// TestHubShowConnectionStringFlag: --connection-string names the service
// on every command, hub show included.
func TestHubShowConnectionStringFlag(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir, info, _ := startLoggingServer(t, "127.0.12.4")
	_, err := runCLI(t, "hub", "show", "nohub", "--connection-string", info.ServiceConnectionString, "--data-dir", dataDir)
	var de *dps.Error
	if !errors.As(err, &de) || de.Status() != 404 {
		t.Errorf("hub show NAME --connection-string CS: %v, want the service's 404 for the hub", err)
	}
	if _, err := runCLI(t, "hub", "show", "nohub", "--show-connection-string", "--data-dir", dataDir); !errors.As(err, &de) {
		t.Errorf("hub show --show-connection-string: %v", err)
	}
}

// TestDeviceProvisionFindsLocalDpsd: --id-scope without --provisioning-host
// talks to the local dpsd (DPSD_DATA_DIR or ./dpsd-data), never to Azure's
// public endpoint.
func TestDeviceProvisionFindsLocalDpsd(t *testing.T) {
	assigned := `{"operationId":"op-1","status":"assigned","registrationState":{"registrationId":"ID","deviceId":"ID","assignedHub":"local-hub","status":"assigned"}}`
	dir := fakeDeviceAPI(t, assigned)
	t.Setenv(envDataDir, dir)
	out, _, err := runDeviceCLI(t, "device", "provision", "--id-scope", "0ne00OTHER1", "--registration-id", "d1", "--symmetric-key", "eA==")
	if err != nil || !strings.Contains(out, "local-hub") {
		t.Errorf("with DPSD_DATA_DIR: %v\n%s", err, out)
	}

	t.Setenv(envDataDir, "")
	t.Chdir(t.TempDir()) // no ./dpsd-data
	_, _, err = runDeviceCLI(t, "device", "provision", "--id-scope", "0ne00OTHER1", "--registration-id", "d1", "--symmetric-key", "eA==")
	if err == nil || !strings.Contains(err.Error(), "no provisioning host") || !strings.Contains(err.Error(), "--provisioning-host") {
		t.Errorf("without any dpsd: %v, want a request for --provisioning-host", err)
	}
}
