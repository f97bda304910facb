package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// hubAddrPrefix is the loopback range of TestNodeSDKHubsOnOneAddress'
// server, apart from the other suites'.
const hubAddrPrefix = "127.0.23"

// TestNodeSDKHubsOnOneAddress runs test/sdk/hub-address.test.js: two
// built-in hubs on dpsd's own listeners, and the Node device SDK over AMQP
// and AMQP over WebSockets reaching each by dpsd's IP address
// (GatewayHostName), with no TLS server name or Host header naming the
// hub: telemetry, and cloud-to-device messages from each hub's service
// client to its own device; then @azure/event-hubs with
// Endpoint=sb://<IP>/ reads each hub's telemetry. The hubs hold the
// telemetry of their own devices only.
func TestNodeSDKHubsOnOneAddress(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	srv := startServerIn(t, hubAddrPrefix)
	type hubInfo struct {
		HostName         string `json:"hostName"`
		Address          string `json:"address"`
		ConnectionString string `json:"connectionString"`
	}
	names := []string{"addr-hub-a", "addr-hub-b"}
	hubs := make([]hubInfo, len(names))
	for i, name := range names {
		decodeJSON(t, "hub create", dpsdCLI(t, srv, "hub", "create", name, "-o", "json"), &hubs[i])
		if hubs[i].ConnectionString == "" || hubs[i].Address != srv.IP {
			t.Fatalf("hub create %s answered %+v, want it on %s", name, hubs[i], srv.IP)
		}
	}
	const deviceID = "addr-device-1"
	runNodeTestsEnv(t, srv, "hub-address.test.js",
		"DPSD_HUB_A_CONNECTION_STRING="+hubs[0].ConnectionString,
		"DPSD_HUB_B_CONNECTION_STRING="+hubs[1].ConnectionString,
		"DPSD_HUB_IP="+srv.IP,
		"DPSD_HUB_DEVICE_ID="+deviceID,
	)
	for i, name := range names {
		var msgs []struct {
			Body             string            `json:"body"`
			SystemProperties map[string]string `json:"systemProperties"`
		}
		decodeJSON(t, "hub messages", dpsdCLI(t, srv, "hub", "messages", "-n", name, "--device-id", deviceID, "-o", "json"), &msgs)
		var ids []string
		for _, m := range msgs {
			ids = append(ids, m.SystemProperties["messageId"])
			var body struct{ Hub string }
			if err := json.Unmarshal([]byte(m.Body), &body); err != nil || body.Hub != hubs[i].HostName {
				t.Errorf("hub %s holds telemetry for %q: %s", name, body.Hub, m.Body)
			}
		}
		want := []string{fmt.Sprintf("Amqp-to-%d", i), fmt.Sprintf("AmqpWs-to-%d", i)}
		if strings.Join(ids, ",") != strings.Join(want, ",") {
			t.Errorf("hub %s holds telemetry %v, want %v", name, ids, want)
		}
	}
}
