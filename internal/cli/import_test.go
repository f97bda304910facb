package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadImport(t *testing.T) {
	tests := []struct {
		name, format, in string
		wantIDs          string
		wantErr          string
	}{
		{"jsonl", "jsonl", "{\"registrationId\":\"a\"}\n\n# comment\n{\"registrationId\":\"b\",\"deviceId\":\"d\"}\n", "a,b", ""},
		{"jsonl unknown member", "jsonl", `{"registrationId":"a","colour":"red"}`, "", `line 1: json: unknown field "colour"`},
		{"jsonl no id", "jsonl", "{\"registrationId\":\"a\"}\n{\"deviceId\":\"x\"}", "", "line 2: no registrationId"},
		{"jsonl not json", "jsonl", "{", "", "line 1:"},
		{"csv", "csv", "registrationId,deviceId,iotHubs,iotEdge,initialTwinTags\na,da,h1;h2,true,\"{\"\"site\"\":\"\"x\"\"}\"\nb,,,,\n", "a,b", ""},
		{"csv unknown column", "csv", "registrationId,colour\na,red\n", "", `unknown column "colour"`},
		{"csv no id column", "csv", "deviceId\na\n", "", "no registrationId column"},
		{"csv empty id", "csv", "registrationId,deviceId\n,a\n", "", "line 2: no registrationId"},
		{"csv bad bool", "csv", "registrationId,iotEdge\na,maybe\n", "", "line 2: iotEdge"},
		{"csv bad tags", "csv", "registrationId,initialTwinTags\na,[1]\n", "", "line 2: initialTwinTags"},
		{"csv ragged", "csv", "registrationId,deviceId\na\n", "", "wrong number of fields"},
		{"format", "xml", "", "", "unknown format"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			list, err := readImport(strings.NewReader(tc.in), tc.format)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, e := range list {
				ids = append(ids, e.RegistrationID)
				if e.Attestation == nil || e.Attestation.Type != "symmetricKey" {
					t.Errorf("%s: attestation %+v", e.RegistrationID, e.Attestation)
				}
			}
			if got := strings.Join(ids, ","); got != tc.wantIDs {
				t.Errorf("ids %s, want %s", got, tc.wantIDs)
			}
			if tc.name == "csv" {
				a := list[0]
				if a.DeviceID != "da" || len(a.IoTHubs) != 2 || a.Capabilities == nil || !a.Capabilities.IoTEdge || a.InitialTwin == nil {
					t.Errorf("csv row a: %+v", a)
				}
			}
		})
	}
}

// TestEnrollmentImport: thousands of enrollments from JSON Lines and CSV,
// with progress; existing ones fail one by one in create mode (exit 1)
// and are replaced in update mode; a duplicate in the file sends nothing.
func TestEnrollmentImport(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir, _, _ := startLoggingServer(t, "127.0.21.5")
	dir := t.TempDir()
	const nJSONL, nCSV = 3000, 2000
	var jl strings.Builder
	for i := range nJSONL {
		fmt.Fprintf(&jl, `{"registrationId":"jl-%05d","provisioningStatus":"enabled"}`+"\n", i)
	}
	jsonl := filepath.Join(dir, "devices.jsonl")
	os.WriteFile(jsonl, []byte(jl.String()), 0o600)
	var cs strings.Builder
	cs.WriteString("registrationId,deviceId,provisioningStatus\n")
	for i := range nCSV {
		fmt.Fprintf(&cs, "csv-%05d,device-%05d,disabled\n", i, i)
	}
	csvFile := filepath.Join(dir, "devices.csv")
	os.WriteFile(csvFile, []byte(cs.String()), 0o600)

	root := NewRootCommand()
	var out, errOut strings.Builder
	root.SetOut(&out)
	root.SetErr(&errOut)
	setArgs(root, []string{"enrollment", "import", "--file", jsonl, "--data-dir", dataDir})
	if err := root.ExecuteContext(t.Context()); err != nil {
		t.Fatalf("import jsonl: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), fmt.Sprintf("Imported %d of %d enrollments", nJSONL, nJSONL)) ||
		!strings.Contains(errOut.String(), fmt.Sprintf("imported %d/%d (0 failed)", nJSONL, nJSONL)) {
		t.Errorf("jsonl import said:\n%s\nprogress:\n%s", out.String(), errOut.String())
	}
	if o, err := runCLI(t, "enrollment", "import", "--file", csvFile, "--data-dir", dataDir, "-q", "-o", "json"); err != nil {
		t.Fatalf("import csv: %v\n%s", err, o)
	}
	count := func(where string) int {
		t.Helper()
		o, err := runCLI(t, "enrollment", "list", "--where", where, "-o", "json", "--query", "length(@)", "--data-dir", dataDir)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		json.Unmarshal([]byte(o), &n)
		return n
	}
	if n := count("provisioningStatus = 'enabled'"); n != nJSONL {
		t.Errorf("%d enabled, want %d", n, nJSONL)
	}
	if n := count("provisioningStatus = 'disabled' AND deviceId = 'device-01999'"); n != 1 {
		t.Errorf("csv row 1999: %d", n)
	}

	// Again in create mode: every item exists.
	o, err := runCLI(t, "enrollment", "import", "--file", csvFile, "--data-dir", dataDir, "-q")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(o, fmt.Sprintf("Imported 0 of %d enrollments", nCSV)) ||
		!strings.Contains(o, "409001") || !strings.Contains(o, "… and 1980 more") {
		t.Errorf("create of existing ones: %v\n%.600s", err, o)
	}
	// Update mode replaces.
	upd := filepath.Join(dir, "upd.csv")
	os.WriteFile(upd, []byte("registrationId,provisioningStatus\ncsv-00001,enabled\njl-00001,disabled\n"), 0o600)
	if o, err := runCLI(t, "enrollment", "import", "--file", upd, "--mode", "update", "--data-dir", dataDir, "-q"); err != nil {
		t.Fatalf("update: %v\n%s", err, o)
	}
	if n := count("provisioningStatus = 'enabled'"); n != nJSONL {
		t.Errorf("after update %d enabled, want %d", n, nJSONL)
	}
	// A duplicate id sends nothing.
	dup := filepath.Join(dir, "dup.jsonl")
	os.WriteFile(dup, []byte("{\"registrationId\":\"new-1\"}\n{\"registrationId\":\"NEW-1\"}\n"), 0o600)
	if _, err := runCLI(t, "enrollment", "import", "--file", dup, "--data-dir", dataDir); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate: %v", err)
	}
	if n := count("registrationId = 'new-1'"); n != 0 {
		t.Errorf("duplicate file created %d", n)
	}
}
