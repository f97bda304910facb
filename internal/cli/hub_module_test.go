package cli

import (
	"bytes"
	"strings"
	"testing"
)

// TestHubModuleIdentityCommands drives dpsd hub module-identity
// create/show/list/delete against a built-in hub.
func TestHubModuleIdentityCommands(t *testing.T) {
	e := newHubCLIEnv(t)
	e.mustRun("create", "mod-hub")
	e.mustRun("device-identity", "create", "-n", "mod-hub", "-d", "gw-1")

	var mod struct {
		DeviceID, ModuleID, ETag string
		Authentication           struct {
			Type         string
			SymmetricKey struct{ PrimaryKey string } `json:"symmetricKey"`
		}
	}
	mustJSON(t, e.mustRun("module-identity", "create", "-n", "mod-hub", "-d", "gw-1", "-m", "thermostat", "-o", "json"), &mod)
	if mod.DeviceID != "gw-1" || mod.ModuleID != "thermostat" || mod.Authentication.Type != "sas" || mod.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("module-identity create: %+v", mod)
	}
	e.mustRun("module-identity", "create", "-n", "mod-hub", "-d", "gw-1", "-m", "filter", "--auth-method", "x509_thumbprint", "--primary-thumbprint", strings.Repeat("ab", 20))
	if out := e.mustRun("module-identity", "show", "-n", "mod-hub", "-d", "gw-1", "-m", "thermostat"); !strings.Contains(out, mod.Authentication.SymmetricKey.PrimaryKey) {
		t.Errorf("module-identity show does not show the key:\n%s", out)
	}
	out := e.mustRun("module-identity", "list", "-n", "mod-hub", "-d", "gw-1")
	if !strings.Contains(out, "thermostat") || !strings.Contains(out, "filter") || !strings.Contains(out, "selfSigned") {
		t.Errorf("module-identity list:\n%s", out)
	}
	e.mustRun("module-identity", "delete", "-n", "mod-hub", "-d", "gw-1", "-m", "thermostat")
	var buf bytes.Buffer
	err := e.run(t.Context(), &buf, "module-identity", "show", "-n", "mod-hub", "-d", "gw-1", "-m", "thermostat")
	if err == nil || !strings.Contains(err.Error(), "ModuleNotFound") && !strings.Contains(strings.ToLower(err.Error()), "not") {
		t.Errorf("show after delete: %v", err)
	}
	for _, args := range [][]string{
		{"module-identity", "create", "-n", "mod-hub", "-d", "gw-1", "-m", "filter"},     // exists
		{"module-identity", "create", "-n", "mod-hub", "-d", "nobody", "-m", "x"},        // no device
		{"module-identity", "create", "-n", "mod-hub", "-d", "gw-1"},                     // no module id
		{"module-identity", "create", "-n", "mod-hub", "-d", "gw-1", "-m", "$edgeAgent"}, // reserved
	} {
		if err := e.run(t.Context(), &buf, args...); err == nil {
			t.Errorf("%v succeeded", args)
		}
	}
}
