package e2e

import (
	"testing"
)

// hubSDKPrefix is the loopback range of TestNodeSDKHubTransports'
// servers, apart from the other suites'.
const hubSDKPrefix = "127.0.17"

// TestNodeSDKHubTransports runs test/sdk/hub-transports.test.js: the Node
// device SDK over MQTT, MQTT over WebSockets, HTTPS, AMQP and AMQP over
// WebSockets against a built-in hub on dpsd's own (shared) listeners —
// telemetry, cloud-to-device messages with complete/reject/abandon and
// their feedback, twins and direct methods of devices and of modules
// (ModuleClient) — driven by the service SDK (Registry CRUD, updateTwin,
// updateModuleTwin, Client.send, invokeDeviceMethod), and the Event
// Hubs-compatible endpoint read by @azure/event-hubs over WebSockets.
func TestNodeSDKHubTransports(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	srv := startServerIn(t, hubSDKPrefix)
	var h struct {
		HostName                 string `json:"hostName"`
		Address                  string `json:"address"`
		ConnectionString         string `json:"connectionString"`
		EventHubConnectionString string `json:"eventHubConnectionString"`
	}
	decodeJSON(t, "hub create", dpsdCLI(t, srv, "hub", "create", "sdk-transports-hub", "-o", "json"), &h)
	if h.HostName == "" || h.ConnectionString == "" || h.EventHubConnectionString == "" {
		t.Fatalf("hub create answered %+v", h)
	}
	runNodeTestsEnv(t, srv, "hub-transports.test.js",
		"DPSD_HUB_CONNECTION_STRING="+h.ConnectionString,
		"DPSD_HUB_EVENTHUB_CONNECTION_STRING="+h.EventHubConnectionString,
		"DPSD_HUB_IP="+srv.IP,
	)
}
