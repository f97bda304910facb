package builtinhub_test

import (
	"testing"

	"github.com/dpsd/dpsd/internal/sas"
)

// TestRegistryStatistics: GET /statistics/devices, what another dpsd's
// health check of this hub calls, counts the devices for a policy with
// RegistryRead and refuses one without.
func TestRegistryStatistics(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("stats-hub", "127.0.16.20")
	createDevice(t, h, "dev1")
	createDevice(t, h, "dev2")
	r := newRESTClient(t, e, h, "registryRead").do("GET", "/statistics/devices", "", "")
	if r.status != 200 || r.body["totalDeviceCount"] != float64(2) || r.body["enabledDeviceCount"] != float64(2) {
		t.Fatalf("statistics: %d %s", r.status, r.raw)
	}
	if r := newRESTClient(t, e, h, "device").do("GET", "/statistics/devices", "", ""); r.status != 401 {
		t.Errorf("statistics with the device policy: %d %s, want 401", r.status, r.raw)
	}
}

// TestCheckKey: a rotated linked hub key is accepted only if it is a
// current key of a policy with the rights registration needs.
func TestCheckKey(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("key-hub", "127.0.16.21")
	keys := map[string][2]string{}
	for _, p := range h.Config().Policies {
		keys[p.KeyName] = [2]string{p.PrimaryKey, p.SecondaryKey}
	}
	tests := []struct {
		name, policy, key string
		ok                bool
	}{
		{"owner primary", "iothubowner", keys["iothubowner"][0], true},
		{"owner secondary", "iothubowner", keys["iothubowner"][1], true},
		{"wrong key", "iothubowner", sas.GenerateKey(32), false},
		{"not base64", "iothubowner", "!!", false},
		{"unknown policy", "nobody", keys["iothubowner"][0], false},
		{"policy without the rights", "registryReadWrite", keys["registryReadWrite"][0], false},
	}
	for _, tt := range tests {
		if err := h.CheckKey(tt.policy, tt.key); (err == nil) != tt.ok {
			t.Errorf("%s: CheckKey = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
