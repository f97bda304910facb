package e2e

import (
	"net"
	"strings"
	"testing"
	"time"
)

// hubSDKPrefix is the loopback range of TestNodeSDKHubTransports'
// servers, apart from the other suites'.
const hubSDKPrefix = "127.0.17"

// ownHubPrefix is the loopback range of
// TestNodeSDKHubTransportsOwnAddress: its server and its hub's address.
const ownHubPrefix = "127.0.26"

// hubInfo is what "dpsd hub create -o json" answers that the SDK tests
// use.
type hubInfo struct {
	HostName                 string `json:"hostName"`
	Address                  string `json:"address"`
	ConnectionString         string `json:"connectionString"`
	EventHubConnectionString string `json:"eventHubConnectionString"`
	AMQPAddr                 string `json:"amqpAddr"`
}

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
	var h hubInfo
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

// TestNodeSDKHubTransportsOwnAddress runs the same test/sdk/hub-transports.test.js
// against a hub created with an address of its own (hub create
// --address): every transport, AMQP and AMQP over WebSockets included, and
// the Event Hubs-compatible endpoint, on that address's own listeners on
// the ports the SDKs hard-code (443, 8883, 5671). Deleting the hub closes
// them.
func TestNodeSDKHubTransportsOwnAddress(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	srv := startServerIn(t, ownHubPrefix)
	ip := pickAddressIn(t, ownHubPrefix)
	var h hubInfo
	decodeJSON(t, "hub create", dpsdCLI(t, srv, "hub", "create", "sdk-own-hub", "--address", ip, "-o", "json"), &h)
	if h.Address != ip || h.AMQPAddr != net.JoinHostPort(ip, "5671") ||
		!strings.HasPrefix(h.EventHubConnectionString, "Endpoint=sb://"+h.HostName+"/;") {
		t.Fatalf("hub create --address %s answered %+v, want its AMQP listener and Event Hubs endpoint on %s:5671", ip, h, ip)
	}
	runNodeTestsEnv(t, srv, "hub-transports.test.js",
		"DPSD_HUB_CONNECTION_STRING="+h.ConnectionString,
		"DPSD_HUB_EVENTHUB_CONNECTION_STRING="+h.EventHubConnectionString,
		"DPSD_HUB_IP="+ip,
	)

	dpsdCLI(t, srv, "hub", "delete", "sdk-own-hub")
	for _, port := range []string{"443", "8883", "5671"} {
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, port), 5*time.Second); err == nil {
			c.Close()
			t.Errorf("%s:%s still accepts connections after the hub was deleted", ip, port)
		}
	}
}
