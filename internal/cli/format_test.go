package cli

import (
	"strings"
	"testing"
)

// TestOutputFormatsAndQuery drives -o and --query as az users write them.
func TestOutputFormatsAndQuery(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir, _, _ := startLoggingServer(t, "127.0.12.5")
	run := func(args ...string) string {
		t.Helper()
		out, err := runCLI(t, append(args, "--data-dir", dataDir)...)
		if err != nil {
			t.Fatalf("dpsd %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	run("enrollment", "create", "--registration-id", "dev-a", "--device-id", "device-a")
	run("enrollment", "create", "--registration-id", "dev-b", "--provisioning-status", "disabled")

	tests := []struct {
		args []string
		want string // exact output; "" with contains set
		has  []string
	}{
		{args: []string{"enrollment", "list", "--query", "[].registrationId", "-o", "tsv"}, want: "dev-a\ndev-b\n"},
		{args: []string{"enrollment", "list", "--query", "[?provisioningStatus=='disabled'].registrationId", "-o", "json"}, want: "[\n  \"dev-b\"\n]\n"},
		{args: []string{"enrollment", "show", "--registration-id", "dev-a", "--query", "deviceId", "-o", "tsv"}, want: "device-a\n"},
		{args: []string{"enrollment", "show", "--registration-id", "dev-a", "--query", "{id: registrationId, device: deviceId}", "-o", "yaml"}, want: "device: device-a\nid: dev-a\n"},
		{args: []string{"enrollment", "list", "-o", "none"}, want: ""},
		{args: []string{"enrollment", "list", "--query", "[].{id: registrationId, status: provisioningStatus}"}, has: []string{"ID     STATUS", "dev-a  enabled", "dev-b  disabled"}},
		{args: []string{"enrollment", "show", "--registration-id", "dev-a", "-o", "jsonc"}, has: []string{colorKey + `"registrationId"` + colorReset + ": " + colorString + `"dev-a"` + colorReset}},
		{args: []string{"enrollment", "list", "--query", "length(@)", "-o", "tsv"}, want: "2\n"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out := run(tc.args...)
			if tc.has == nil && out != tc.want {
				t.Errorf("output %q, want %q", out, tc.want)
			}
			for _, h := range tc.has {
				if !strings.Contains(out, h) {
					t.Errorf("output lacks %q:\n%s", h, out)
				}
			}
		})
	}
	if _, err := runCLI(t, "enrollment", "list", "--query", "[?", "--data-dir", dataDir); err == nil || !strings.Contains(err.Error(), "--query") {
		t.Errorf("bad query: %v", err)
	}
	if _, err := runCLI(t, "enrollment", "list", "-o", "xml", "--data-dir", dataDir); err == nil || !strings.Contains(err.Error(), "jsonc") {
		t.Errorf("unknown format: %v", err)
	}
}
