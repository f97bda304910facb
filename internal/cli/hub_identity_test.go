package cli

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/internal/sas"
)

// TestHubAzLikeCommands drives the az-shaped commands against a built-in
// hub: device-identity, connection strings, device-twin, SAS tokens and
// direct methods, with a device using what they print.
func TestHubAzLikeCommands(t *testing.T) {
	e := newHubCLIEnv(t)
	e.mustRun("create", "az-hub")
	host := "az-hub.azure-devices.internal"

	var dev struct {
		DeviceID       string `json:"deviceId"`
		Status         string `json:"status"`
		ETag           string `json:"etag"`
		Authentication struct {
			SymmetricKey struct{ PrimaryKey, SecondaryKey string } `json:"symmetricKey"`
		} `json:"authentication"`
	}
	mustJSON(t, e.mustRun("device-identity", "create", "-n", "az-hub", "-d", "sensor-1", "-o", "json"), &dev)
	if dev.DeviceID != "sensor-1" || dev.Status != "enabled" || dev.Authentication.SymmetricKey.PrimaryKey == "" {
		t.Fatalf("device-identity create: %+v", dev)
	}
	key := dev.Authentication.SymmetricKey.PrimaryKey
	if out := e.mustRun("device-identity", "show", "-n", "az-hub", "-d", "sensor-1"); !strings.Contains(out, key) {
		t.Errorf("device-identity show does not show the key:\n%s", out)
	}
	if out := e.mustRun("device-identity", "list", "-n", "az-hub"); !strings.Contains(out, "sensor-1") {
		t.Errorf("device-identity list:\n%s", out)
	}
	cs := strings.TrimSpace(e.mustRun("device-identity", "connection-string", "show", "-n", "az-hub", "-d", "sensor-1"))
	parsed, err := sas.ParseConnectionString(cs)
	if err != nil || parsed.HostName != host || parsed.DeviceID != "sensor-1" || parsed.SharedAccessKey != key {
		t.Fatalf("connection-string show = %q (%v)", cs, err)
	}

	// generate-sas-token: a device token the hub accepts.
	tok := strings.TrimSpace(e.mustRun("generate-sas-token", "-n", "az-hub", "-d", "sensor-1", "--duration", "10m"))
	req, _ := http.NewRequest(http.MethodPost, "https://"+e.hubsAddr+"/devices/sensor-1/messages/events?api-version=2020-09-30", strings.NewReader("hi"))
	req.Host = host
	req.Header.Set("Authorization", tok)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.ca.Pool(), ServerName: host}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("telemetry with the generated token: %v %v", resp, err)
	}
	resp.Body.Close()
	if svcTok := strings.TrimSpace(e.mustRun("generate-sas-token", "-n", "az-hub")); !strings.Contains(svcTok, "skn=iothubowner") {
		t.Errorf("hub token %q", svcTok)
	}

	// device-twin update and replace.
	var twin struct {
		Tags       map[string]any `json:"tags"`
		Properties struct {
			Desired map[string]any `json:"desired"`
		} `json:"properties"`
	}
	mustJSON(t, e.mustRun("device-twin", "update", "-n", "az-hub", "-d", "sensor-1", "--desired", `{"interval":30}`, "--tags", `{"site":"hall"}`), &twin)
	if twin.Tags["site"] != "hall" || twin.Properties.Desired["interval"] != float64(30) {
		t.Errorf("device-twin update: %+v", twin)
	}
	twin.Tags, twin.Properties.Desired = nil, nil
	mustJSON(t, e.mustRun("device-twin", "replace", "-n", "az-hub", "-d", "sensor-1", "--json", `{"tags":{"floor":"2"},"properties":{"desired":{"mode":"eco"}}}`), &twin)
	if twin.Tags["floor"] != "2" || twin.Tags["site"] != nil || twin.Properties.Desired["mode"] != "eco" || twin.Properties.Desired["interval"] != nil {
		t.Errorf("device-twin replace: %+v", twin)
	}

	// invoke-device-method on the device connected over MQTT with its
	// connection string's key.
	mtok, _ := sas.New(url.QueryEscape(host+"/devices/sensor-1"), "", key, time.Now().Add(time.Hour))
	opts := paho.NewClientOptions().AddBroker("ssl://" + e.mqttAddr).SetClientID("sensor-1").
		SetUsername(host + "/sensor-1/?api-version=2021-04-12").SetPassword(mtok).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: e.ca.Pool(), ServerName: host})
	c := paho.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(15*time.Second) || tk.Error() != nil {
		t.Fatalf("device connect: %v", tk.Error())
	}
	defer c.Disconnect(100)
	sub := c.Subscribe("$iothub/methods/POST/#", 1, func(cl paho.Client, m paho.Message) {
		// $iothub/methods/POST/{name}/?$rid={rid}
		rid := m.Topic()[strings.Index(m.Topic(), "$rid=")+len("$rid="):]
		cl.Publish("$iothub/methods/res/200/?$rid="+rid, 0, false, `{"echo":`+string(m.Payload())+`}`)
	})
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		t.Fatalf("subscribe: %v", sub.Error())
	}
	var res struct {
		Status  int            `json:"status"`
		Payload map[string]any `json:"payload"`
	}
	mustJSON(t, e.mustRun("invoke-device-method", "-n", "az-hub", "-d", "sensor-1", "--method-name", "ping", "--method-payload", `{"n":1}`), &res)
	if res.Status != 200 || res.Payload["echo"].(map[string]any)["n"] != float64(1) {
		t.Errorf("invoke-device-method: %+v", res)
	}

	// update and delete.
	mustJSON(t, e.mustRun("device-identity", "update", "-n", "az-hub", "-d", "sensor-1", "--status", "disabled", "-o", "json"), &dev)
	if dev.Status != "disabled" {
		t.Errorf("device-identity update --status disabled: %+v", dev)
	}
	e.mustRun("device-identity", "delete", "-n", "az-hub", "-d", "sensor-1")
	var buf strings.Builder
	if err := e.run(t.Context(), &buf, "device-identity", "show", "-n", "az-hub", "-d", "sensor-1"); err == nil {
		t.Error("device-identity show after delete succeeded")
	}
	for _, args := range [][]string{
		{"device-identity", "create", "-n", "az-hub", "-d", "x", "--auth-method", "password"},
		{"device-identity", "create", "-n", "az-hub", "-d", "x", "--auth-method", "x509_thumbprint"},
		{"device-twin", "update", "-n", "az-hub", "-d", "x", "--desired", "{not json"},
		{"invoke-device-method", "-n", "az-hub", "-d", "x", "--method-name", "m", "--timeout", "1"},
		{"device-identity", "create", "-n", "no-such-hub", "-d", "x"},
	} {
		if err := e.run(t.Context(), &buf, args...); err == nil {
			t.Errorf("dpsd hub %s succeeded", strings.Join(args, " "))
		}
	}
}

func mustJSON(t *testing.T, s string, out any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), out); err != nil {
		t.Fatalf("%v in %s", err, s)
	}
}
