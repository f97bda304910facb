package builtinhub

import "testing"

// TestDeviceNodeAddresses: the twin and methods node addresses of devices
// and modules, as each SDK writes them.
func TestDeviceNodeAddresses(t *testing.T) {
	for _, tc := range []struct {
		addr, id, node string
	}{
		{"/devices/d1/twin", "d1", "twin"},
		{"/devices/d1/methods/devicebound", "d1", "methods/devicebound"},
		{"/devices/d1/modules/m1/twin", "d1/m1", "twin"},
		{"/devices/d1/modules/m1/methods/devicebound", "d1/m1", "methods/devicebound"},
		{"amqps://hub.example/devices/d1/modules/m1/twin", "d1/m1", "twin"},
		{"amqps://hub.example:5671/devices/d%231/modules/m%2B1/methods/deviceBound", "d#1/m+1", "methods/devicebound"},
		{"/devices/modules/twin", "modules", "twin"},
		{"/devices/d1/modules/twin", "", ""},
		{"/devices/d1/modules//twin", "", ""},
		{"/devices/a%2Fb/twin", "", ""},
		{"/devices/d1/modules/a%2Fb/twin", "", ""},
		{"/devices/d1/modules/m1/messages/events", "", ""},
		{"/devices//twin", "", ""},
		{"amqps://hub.example", "", ""},
	} {
		id, node, ok := deviceNode(tc.addr)
		if id != tc.id || node != tc.node || ok != (tc.id != "") {
			t.Errorf("%q: %q %q %v, want %q %q", tc.addr, id, node, ok, tc.id, tc.node)
		}
	}
}
