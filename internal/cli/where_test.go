package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
)

// TestListWhere: --where filters enrollment and group lists on the
// service, across pages (--top), and an unsupported condition is the
// service's 400.
func TestListWhere(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir, _, _ := startLoggingServer(t, "127.0.21.2")
	for i := range 6 {
		args := []string{"enrollment", "create", "--registration-id", fmt.Sprintf("dev%d", i), "--data-dir", dataDir}
		if i%2 == 1 {
			args = append(args, "--provisioning-status", "disabled")
		}
		if _, err := runCLI(t, args...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := runCLI(t, "enrollment-group", "create", "--enrollment-group-id", "g1", "--provisioning-status", "disabled", "--data-dir", dataDir); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "enrollment-group", "create", "--enrollment-group-id", "g2", "--data-dir", dataDir); err != nil {
		t.Fatal(err)
	}
	ids := func(args ...string) []string {
		t.Helper()
		out, err := runCLI(t, append(args, "-o", "json", "--data-dir", dataDir)...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		var items []struct{ RegistrationID, EnrollmentGroupID string }
		if err := json.Unmarshal([]byte(out), &items); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		var ids []string
		for _, it := range items {
			ids = append(ids, it.RegistrationID+it.EnrollmentGroupID)
		}
		return ids
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"enrollment", "list", "--where", "provisioningStatus = 'disabled'"}, []string{"dev1", "dev3", "dev5"}},
		{[]string{"enrollment", "list", "--where", "provisioningStatus = 'enabled'", "--top", "2"}, []string{"dev0", "dev2"}},
		{[]string{"enrollment", "list", "--where", "registrationId IN ('dev4', 'dev5') AND NOT provisioningStatus = 'disabled'"}, []string{"dev4"}},
		{[]string{"enrollment", "list"}, []string{"dev0", "dev1", "dev2", "dev3", "dev4", "dev5"}},
		{[]string{"enrollment-group", "list", "--where", "provisioningStatus = 'enabled'"}, []string{"g2"}},
	} {
		if got := ids(tc.args...); !slices.Equal(got, tc.want) {
			t.Errorf("%v: %v, want %v", tc.args, got, tc.want)
		}
	}
	_, err := runCLI(t, "enrollment", "list", "--where", "registrationId LIKE 'dev%'", "--data-dir", dataDir)
	var de *dps.Error
	if !errors.As(err, &de) || de.ErrorCode != dps.CodeBadRequest {
		t.Errorf("unsupported --where: %v", err)
	}
}
