package builtinhub_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// eventHubEnv is a shared-endpoint env on 127.0.18.1 (HTTPS, MQTT and
// AMQP listeners on ephemeral ports) with one hub and a device.
func eventHubEnv(t *testing.T, hubName, deviceID string) (*env, *builtinhub.Shared, *builtinhub.Hub) {
	t.Helper()
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.18.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	httpsL, mqttL, amqpL := listen(), listen(), listen()
	shared := &builtinhub.Shared{Address: "127.0.18.1", HTTPSAddr: httpsL.Addr().String(), MQTTAddr: mqttL.Addr().String(), AMQPAddr: amqpL.Addr().String()}
	e := newEnv(t, func(o *builtinhub.Options) { o.Shared = shared })
	m := e.m
	go func() { _ = m.ServeListener(builtinhub.ProtocolHTTPS, httpsL) }()
	go func() { _ = m.ServeListener(builtinhub.ProtocolMQTT, mqttL) }()
	go func() { _ = m.ServeListener(builtinhub.ProtocolAMQP, amqpL) }()
	if _, err := e.m.Create(context.Background(), hubName, builtinhub.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := e.hub(hubName)
	createDevice(t, h, deviceID)
	return e, shared, h
}

// TestNodeEventHubsConsumer runs test/sdk/hub-eventhub.test.js: a device
// sends telemetry over MQTT and the official @azure/event-hubs
// EventHubConsumerClient reads it from the hub's Event Hubs-compatible
// endpoint, with the connection string the hub's info gives.
func TestNodeEventHubsConsumer(t *testing.T) {
	sdkDir, err := filepath.Abs("../../../test/sdk")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err != nil || !fileExists(filepath.Join(sdkDir, "node_modules", "@azure", "event-hubs")) {
		if os.Getenv("CI") == "" {
			t.Skip("node or test/sdk/node_modules missing (run scripts/install-test-deps.sh)")
		}
		t.Fatalf("CI is set but node or the SDKs are missing: %v", err)
	}
	e, shared, h := eventHubEnv(t, "eventhub-node-hub", "thermo-1")
	in, err := e.m.Info(context.Background(), h.Name())
	if err != nil {
		t.Fatal(err)
	}
	_, amqpPort, _ := net.SplitHostPort(shared.AMQPAddr)
	wantPrefix := "Endpoint=sb://" + h.Config().HostName + ":" + amqpPort + "/;SharedAccessKeyName=service;SharedAccessKey="
	if !strings.HasPrefix(in.EventHubConnectionString, wantPrefix) || !strings.HasSuffix(in.EventHubConnectionString, ";EntityPath=eventhub-node-hub") {
		t.Fatalf("event hub connection string %q, want %s…;EntityPath=eventhub-node-hub", in.EventHubConnectionString, wantPrefix)
	}
	deviceCS := sas.ConnectionString{HostName: h.Config().HostName, DeviceID: "thermo-1", SharedAccessKey: testKey1, GatewayHostName: shared.MQTTAddr}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-concurrency=1", "hub-eventhub.test.js")
	cmd.Dir = sdkDir
	cmd.Env = append(os.Environ(),
		"DPSD_HUB_DEVICE_CONNECTION_STRING="+deviceCS.String(),
		"DPSD_HUB_EVENTHUB_CONNECTION_STRING="+in.EventHubConnectionString,
		"DPSD_HUB_IP="+shared.Address,
		"NODE_EXTRA_CA_CERTS="+e.ca.CertFile(),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test hub-eventhub.test.js:\n%s", out)
	if err != nil {
		t.Fatalf("node tests failed: %v", err)
	}
	if !strings.Contains(string(out), "# pass 4") {
		t.Fatal("node tests were skipped")
	}
}
