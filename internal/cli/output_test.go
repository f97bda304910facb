package cli

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
)

func TestOutput(t *testing.T) {
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123, time.UTC)
	enrollments := []dps.IndividualEnrollment{
		{
			RegistrationID: "dev-1", DeviceID: "d1", ETag: `"e1"`, ProvisioningStatus: "enabled",
			Attestation:      &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
			AllocationPolicy: "hashed", IoTHubs: []string{"h1", "h2"},
		},
		{
			RegistrationID: "dev-2", ProvisioningStatus: "disabled",
			Attestation: &dps.AttestationMechanism{Type: dps.AttestationX509,
				X509: &dps.X509Attestation{CAReferences: &dps.X509CAReferences{Primary: "ca"}}},
		},
	}
	group := &dps.EnrollmentGroup{
		EnrollmentGroupID: "grp",
		Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey,
			SymmetricKey: &dps.SymmetricKeyAttestation{PrimaryKey: "pk", SecondaryKey: "sk"}},
		ProvisioningStatus: "enabled", AllocationPolicy: "custom", IoTHubs: []string{"h1"},
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "https://w", APIVersion: "2021-10-01"},
		InitialTwin: &dps.InitialTwin{Tags: json.RawMessage(`{ "a": 1 }`),
			Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`{"b":"c"}`)}},
		ReprovisionPolicy: &dps.ReprovisionPolicy{UpdateHubAssignment: true},
		ETag:              `"g1"`, CreatedDateTimeUTC: &ts,
	}
	regs := []dps.DeviceRegistrationState{
		{RegistrationID: "dev-1", Status: "assigned", AssignedHub: "h1", DeviceID: "dev-1", LastUpdatedDateTimeUTC: &ts, ETag: "abc="},
		{RegistrationID: "dev-2", Status: "failed", ErrorCode: 400207, ErrorMessage: "Custom allocation failed with status code: 500"},
	}
	tests := []struct {
		name  string
		print func(*bytes.Buffer) error
		want  string
	}{
		{
			name:  "enrollment table",
			print: func(b *bytes.Buffer) error { return printEnrollments(b, false, enrollments) },
			want: `REGISTRATION ID  DEVICE ID  ATTESTATION          STATUS    ALLOCATION  IOT HUBS  ETAG
dev-1            d1         symmetricKey         enabled   hashed      h1,h2     "e1"
dev-2            -          x509 (CA reference)  disabled  -           -         -
`,
		},
		{
			name:  "empty list as JSON",
			print: func(b *bytes.Buffer) error { return printEnrollments(b, true, nil) },
			want:  "[]\n",
		},
		{
			name:  "group table",
			print: func(b *bytes.Buffer) error { return printEnrollmentGroups(b, false, []dps.EnrollmentGroup{*group}) },
			want: `ENROLLMENT GROUP ID  ATTESTATION   STATUS   ALLOCATION  IOT HUBS  ETAG
grp                  symmetricKey  enabled  custom      h1        "g1"
`,
		},
		{
			name:  "group details",
			print: func(b *bytes.Buffer) error { return printEnrollmentGroup(b, false, group) },
			want: `Enrollment group ID:   grp
Attestation:           symmetricKey
Primary key:           pk
Secondary key:         sk
Provisioning status:   enabled
Allocation policy:     custom
IoT hubs:              h1
Webhook URL:           https://w
Webhook API version:   2021-10-01
Initial twin tags:     {"a":1}
Initial twin desired:  {"b":"c"}
Reprovision policy:    reprovisionandresetdata
ETag:                  "g1"
Created:               2024-05-06T07:08:09Z
`,
		},
		{
			name: "group JSON is the wire object",
			print: func(b *bytes.Buffer) error {
				return printEnrollmentGroup(b, true, &dps.EnrollmentGroup{EnrollmentGroupID: "g", ETag: `"x"`})
			},
			want: `{
  "enrollmentGroupId": "g",
  "attestation": null,
  "etag": "\"x\""
}
`,
		},
		{
			name:  "registration table",
			print: func(b *bytes.Buffer) error { return printRegistrations(b, false, regs) },
			want: `REGISTRATION ID  STATUS    ASSIGNED HUB  DEVICE ID  ERROR   LAST UPDATED          ETAG
dev-1            assigned  h1            dev-1      -       2024-05-06T07:08:09Z  abc=
dev-2            failed    -             -          400207  -                     -
`,
		},
		{
			name:  "registration details",
			print: func(b *bytes.Buffer) error { return printRegistration(b, false, &regs[1]) },
			want: `Registration ID:  dev-2
Status:           failed
Error code:       400207
Error message:    Custom allocation failed with status code: 500
`,
		},
		{
			name: "enrollment details",
			print: func(b *bytes.Buffer) error {
				e := enrollments[0]
				e.RegistrationState = &regs[0]
				e.Capabilities = &dps.DeviceCapabilities{IoTEdge: true}
				return printEnrollment(b, false, &e)
			},
			want: `Registration ID:      dev-1
Device ID:            d1
Attestation:          symmetricKey
Provisioning status:  enabled
Allocation policy:    hashed
IoT hubs:             h1, h2
Edge enabled:         true
Registration status:  assigned
Assigned hub:         h1
ETag:                 "e1"
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tt.print(&b); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestOutputFormatFlag(t *testing.T) {
	tests := []struct {
		format  string
		json    bool
		wantErr bool
	}{
		{format: "table"}, {format: "TABLE"}, {format: "json", json: true}, {format: "yaml", json: true},
		{format: "jsonc", json: true}, {format: "tsv", json: true}, {format: "none", json: true}, {format: "xml", wantErr: true},
	}
	for _, tt := range tests {
		got, err := (&outputFlags{format: tt.format}).json()
		if (err != nil) != tt.wantErr || got != tt.json {
			t.Errorf("%q: json=%v err=%v", tt.format, got, err)
		}
	}
}

func TestCell(t *testing.T) {
	for in, want := range map[string]string{"": "-", "a\tb\nc": "a b c", " x ": "x"} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
	if strings.Contains(cell("a\nb"), "\n") {
		t.Error("cell kept a newline")
	}
}

// TestTerminalEscapes checks that text from outside (a webhook's answer,
// a device's payload) reaches the terminal as text: no ESC, BEL, C1
// control or stray byte leaves the CLI's tables and detail views raw.
func TestTerminalEscapes(t *testing.T) {
	hostile := "\x1b]0;owned\x07\x1b[2J\u009b31m\xffok"
	for in, want := range map[string]string{
		hostile:          `\x1b]0;owned\a\x1b[2J\u009b31m\xffok`,
		"plain, ünïcode": "plain, ünïcode",
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
	reg := &dps.DeviceRegistrationState{RegistrationID: "dev", Status: "failed", ErrorMessage: hostile, AssignedHub: hostile}
	for _, tc := range []struct {
		name  string
		print func(*bytes.Buffer) error
	}{
		{"show", func(b *bytes.Buffer) error { return printRegistration(b, false, reg) }},
		{"list", func(b *bytes.Buffer) error { return printRegistrations(b, false, []dps.DeviceRegistrationState{*reg}) }},
	} {
		var b bytes.Buffer
		if err := tc.print(&b); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"\x1b", "\x07", "\u009b", "\xff"} {
			if strings.Contains(b.String(), bad) {
				t.Errorf("%s printed %q raw:\n%q", tc.name, bad, b.String())
			}
		}
	}
}

func TestHostsLines(t *testing.T) {
	hub := func(name, addr string) *admin.Hub {
		return &admin.Hub{Name: name, HostName: name + ".azure-devices.internal", Address: addr}
	}
	for _, tc := range []struct {
		name string
		hubs []*admin.Hub
		want []string
	}{
		{"none", nil, []string{}},
		{"shared", []*admin.Hub{hub("a", "127.0.0.1"), hub("b", "127.0.0.1")},
			[]string{"127.0.0.1 a.azure-devices.internal b.azure-devices.internal"}},
		{"shared and own", []*admin.Hub{hub("a", "127.0.0.1"), hub("b", "127.0.0.11"), hub("c", "127.0.0.1")},
			[]string{"127.0.0.1 a.azure-devices.internal c.azure-devices.internal", "127.0.0.11 b.azure-devices.internal"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hostsLines(tc.hubs); !slices.Equal(got, tc.want) {
				t.Errorf("hostsLines = %q, want %q", got, tc.want)
			}
		})
	}
}
