package builtinhub

import (
	"strings"
	"testing"
)

// FuzzDeviceLink: an AMQP node address parses to a device id, or a
// module's "{deviceId}/{moduleId}" with exactly one '/', or nothing.
func FuzzDeviceLink(f *testing.F) {
	for _, s := range []string{"/devices/d1/messages/events", "/devices/d1/modules/m1/messages/events", "/devices/a%2Fb/modules//messages/x", "/devices//messages/devicebound", "/devices/d/modules/m/n/messages/events"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		id, _, ok := deviceLink(addr)
		if !ok {
			return
		}
		if id == "" {
			t.Fatalf("%q: empty id", addr)
		}
		if strings.Count(id, "/") > 1 || strings.HasPrefix(id, "/") || strings.HasSuffix(id, "/") {
			t.Fatalf("%q: id %q is neither a device id nor device/module", addr, id)
		}
	})
}
