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

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/sas"
)

// TestNodeSDKAgainstBuiltinHub provisions a device into a built-in hub the
// way the engine does (through hub.Registrar) and runs
// test/sdk/hub.test.js, where the official Node device and service SDKs
// use it. It is skipped only when node or the SDKs are missing outside CI.
func TestNodeSDKAgainstBuiltinHub(t *testing.T) {
	sdkDir, err := filepath.Abs("../../../test/sdk")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err != nil || !fileExists(filepath.Join(sdkDir, "node_modules", "azure-iot-device-mqtt")) {
		if os.Getenv("CI") == "" {
			t.Skip("node or test/sdk/node_modules missing (run test/sdk/scripts/install-test-deps.sh)")
		}
		t.Fatalf("CI is set but node or the SDKs are missing: %v", err)
	}

	e := newEnv(t, nil)
	h := e.createHub("contoso-toasters-hub-1098", "127.0.0.36")
	cfg := h.Config()
	r := hub.NewRegistrar(hub.RegistrarOptions{Local: e.m})
	const id = "breakroom499-contoso-tstrsd-007"
	const key = "JC8F96eayuQwwz+PkE7IzjH2lIAjCUnAa61tDigBnSs="
	err = r.RegisterDevice(context.Background(), &provision.HubDevice{
		Hub: cfg.HostName, DeviceID: id, PrimaryKey: key, SecondaryKey: key,
		InitialTwin: &dps.InitialTwin{
			Tags:       []byte(`{"deviceType":"toaster"}`),
			Properties: &dps.InitialTwinProperties{Desired: []byte(`{"state":"ready","darknessSetting":"medium"}`)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	deviceCS := sas.ConnectionString{HostName: cfg.HostName, DeviceID: id, SharedAccessKey: key, GatewayHostName: h.MQTTAddr()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-concurrency=1", "hub.test.js")
	cmd.Dir = sdkDir
	cmd.Env = append(os.Environ(),
		"DPSD_HUB_DEVICE_CONNECTION_STRING="+deviceCS.String(),
		"DPSD_HUB_CONNECTION_STRING="+cfg.ConnectionString().String(),
		"DPSD_HUB_HTTPS_ADDR="+h.HTTPSAddr(),
		"NODE_EXTRA_CA_CERTS="+e.ca.CertFile(),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test hub.test.js:\n%s", out)
	if err != nil {
		t.Fatalf("node tests failed: %v", err)
	}
	if strings.Contains(string(out), "# skipped 3") {
		t.Fatal("node tests were skipped")
	}

	// The hub shows the telemetry the SDK sent.
	msgs := h.Messages(id, 0, 0)
	if len(msgs) != 1 || msgs[0].SystemProperties["messageId"] != "node-m-1" || msgs[0].Properties["alert"] != "false" ||
		!strings.Contains(msgs[0].Body, "21.5") {
		t.Fatalf("telemetry %+v", msgs)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestNodeSDKCloudToDevice runs test/sdk/hub-c2d.test.js: the Node
// azure-iothub service Client sends a cloud-to-device message over AMQP
// to a hub on the shared endpoint, and an azure-iot-device client over
// MQTT receives it.
func TestNodeSDKCloudToDevice(t *testing.T) {
	sdkDir, err := filepath.Abs("../../../test/sdk")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err != nil || !fileExists(filepath.Join(sdkDir, "node_modules", "azure-iothub")) {
		if os.Getenv("CI") == "" {
			t.Skip("node or test/sdk/node_modules missing (run test/sdk/scripts/install-test-deps.sh)")
		}
		t.Fatalf("CI is set but node or the SDKs are missing: %v", err)
	}
	e, shared := sharedEnv(t)
	if _, err := e.m.Create(context.Background(), "c2d-node-hub", builtinhub.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := e.hub("c2d-node-hub")
	createDevice(t, h, "lamp-1")
	createDevice(t, h, "meter-1")
	createDevice(t, h, "hygro-1")
	cfg := h.Config()
	_, amqpPort, _ := net.SplitHostPort(shared.AMQPAddr)
	hubCS := cfg.ConnectionString()
	hubCS.HostName = net.JoinHostPort(cfg.HostName, amqpPort)
	deviceCS := sas.ConnectionString{HostName: cfg.HostName, DeviceID: "lamp-1", SharedAccessKey: testKey1, GatewayHostName: shared.MQTTAddr}
	httpCS := sas.ConnectionString{HostName: cfg.HostName, DeviceID: "meter-1", SharedAccessKey: testKey1}
	_, httpsPort, _ := net.SplitHostPort(shared.HTTPSAddr)
	amqpCS := sas.ConnectionString{HostName: cfg.HostName, DeviceID: "hygro-1", SharedAccessKey: testKey1, GatewayHostName: shared.AMQPAddr}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-concurrency=1", "hub-c2d.test.js")
	cmd.Dir = sdkDir
	cmd.Env = append(os.Environ(),
		"DPSD_HUB_DEVICE_CONNECTION_STRING="+deviceCS.String(),
		"DPSD_HUB_CONNECTION_STRING="+hubCS.String(),
		"DPSD_HUB_IP="+shared.Address,
		"DPSD_HUB_HTTP_DEVICE_CONNECTION_STRING="+httpCS.String(),
		"DPSD_HUB_HTTPS_PORT="+httpsPort,
		"DPSD_HUB_AMQP_DEVICE_CONNECTION_STRING="+amqpCS.String(),
		"NODE_EXTRA_CA_CERTS="+e.ca.CertFile(),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test hub-c2d.test.js:\n%s", out)
	if err != nil {
		t.Fatalf("node tests failed: %v", err)
	}
	if !strings.Contains(string(out), "# pass 3") {
		t.Fatal("node tests were skipped")
	}
	// The telemetry the HTTP transport sent, one message and a batch.
	msgs := h.Messages("meter-1", 0, 0)
	if len(msgs) != 3 || msgs[0].SystemProperties["messageId"] != "http-m-1" || msgs[0].Properties["source"] != "http" ||
		msgs[0].Body != `{"temperature":22.5}` || msgs[1].Body != "b1" || msgs[2].Body != "b2" {
		t.Fatalf("telemetry over HTTPS %+v", msgs)
	}
	msgs = h.Messages("hygro-1", 0, 0)
	if len(msgs) != 1 || msgs[0].SystemProperties["messageId"] != "amqp-m-1" || msgs[0].Properties["source"] != "amqp" || msgs[0].Body != `{"humidity":40}` {
		t.Fatalf("telemetry over AMQP %+v", msgs)
	}
}

// TestNodeSDKModules runs test/sdk/hub-modules.test.js: the Node
// azure-iothub Registry manages module identities and module twins and
// uses the bulk registry operation, and an azure-iot-device ModuleClient
// uses its twin and sends telemetry over MQTT, and another sends telemetry
// over AMQP.
func TestNodeSDKModules(t *testing.T) {
	sdkDir, err := filepath.Abs("../../../test/sdk")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err != nil || !fileExists(filepath.Join(sdkDir, "node_modules", "azure-iothub")) {
		if os.Getenv("CI") == "" {
			t.Skip("node or test/sdk/node_modules missing (run test/sdk/scripts/install-test-deps.sh)")
		}
		t.Fatalf("CI is set but node or the SDKs are missing: %v", err)
	}
	e, shared := sharedEnv(t)
	if _, err := e.m.Create(context.Background(), "module-node-hub", builtinhub.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := e.hub("module-node-hub")
	createDevice(t, h, "gateway-1")
	cfg := h.Config()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-concurrency=1", "hub-modules.test.js")
	cmd.Dir = sdkDir
	cmd.Env = append(os.Environ(),
		"DPSD_HUB_CONNECTION_STRING="+cfg.ConnectionString().String(),
		"DPSD_HUB_HTTPS_ADDR="+h.HTTPSAddr(),
		"DPSD_HUB_MQTT_ADDR="+h.MQTTAddr(),
		"DPSD_HUB_AMQP_ADDR="+shared.AMQPAddr,
		"DPSD_HUB_DEVICE_ID=gateway-1",
		"NODE_EXTRA_CA_CERTS="+e.ca.CertFile(),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test hub-modules.test.js:\n%s", out)
	if err != nil {
		t.Fatalf("node tests failed: %v", err)
	}
	if !strings.Contains(string(out), "# pass 3") {
		t.Fatal("node tests were skipped")
	}
	msgs := h.Messages("gateway-1", 0, 0)
	if len(msgs) != 2 || msgs[0].ModuleID != "filter" || msgs[0].SystemProperties["messageId"] != "module-m-1" ||
		msgs[1].ModuleID != "amqpmod" || msgs[1].SystemProperties["messageId"] != "module-amqp-1" {
		t.Fatalf("module telemetry %+v", msgs)
	}
}
