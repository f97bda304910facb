package multinode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/internal/sas"
)

// liveWait bounds the wait for what one node does to show on another.
const liveWait = 15 * time.Second

// hubCluster is a built-in hub every node of a cluster serves on its own
// listeners, with clients of it.
type hubCluster struct {
	*cluster
	name, host string
	ownerKey   string
	roots      *x509.CertPool // every node's local CA, which issues the hubs' certificates
	// caFile holds the nodes' CA and their local CAs, for the CLI, which
	// talks to the nodes and to the hub on them.
	caFile string
}

// cli runs the dpsd command line against node n.
func (hc *hubCluster) cli(t *testing.T, n *node, args ...string) string {
	t.Helper()
	ca := hc.caFile
	if ca == "" {
		ca = hc.certs.CAFile
	}
	out, err := runCLI(t, append(args, "--data-dir", n.DataDir, "--ca-file", ca)...)
	if err != nil {
		t.Fatalf("dpsd %s on %s: %v\n%s", strings.Join(args, " "), n.name, err, out)
	}
	return out
}

// startHubCluster starts two nodes over PostgreSQL and creates a hub
// through the first; the second starts it when told.
func startHubCluster(t *testing.T, env ...string) *hubCluster {
	t.Helper()
	c := startCluster(t, clusterOptions{nodes: 2, env: env})
	hc := &hubCluster{cluster: c, name: "mn-hub", roots: x509.NewCertPool()}
	var info struct {
		HostName         string `json:"hostName"`
		ConnectionString string `json:"connectionString"`
	}
	if err := json.Unmarshal([]byte(hc.cli(t, c.nodes[0], "hub", "create", hc.name, "-o", "json")), &info); err != nil {
		t.Fatal(err)
	}
	cs, err := sas.ParseConnectionString(info.ConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	hc.host, hc.ownerKey = info.HostName, cs.SharedAccessKey
	bundle, err := os.ReadFile(c.certs.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		pem, err := os.ReadFile(filepath.Join(n.DataDir, "tls", "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		hc.roots.AppendCertsFromPEM(pem)
		bundle = append(append(bundle, '\n'), pem...)
	}
	hc.caFile = filepath.Join(t.TempDir(), "cas.pem")
	if err := os.WriteFile(hc.caFile, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	// The other node starts the hub when told, without a restart.
	deadline := time.Now().Add(liveWait)
	for {
		var shown struct {
			Running bool `json:"running"`
		}
		_ = json.Unmarshal([]byte(hc.cli(t, c.nodes[1], "hub", "show", "-n", hc.name, "-o", "json")), &shown)
		if shown.Running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hub %s created through %s does not run on %s", hc.name, c.nodes[0].name, c.nodes[1].name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return hc
}

// device creates a device through n and returns a SAS token of it.
func (hc *hubCluster) device(t *testing.T, n *node, id string) string {
	t.Helper()
	hc.cli(t, n, "hub", "device-identity", "create", "-n", hc.name, "-d", id)
	return strings.TrimSpace(hc.cli(t, n, "hub", "generate-sas-token", "-n", hc.name, "-d", id, "--duration", "1h"))
}

// mqttDevice connects a device to the hub on node n over MQTT and
// subscribes to its cloud-to-device messages and desired properties.
func (hc *hubCluster) mqttDevice(t *testing.T, n *node, id, token string) (paho.Client, <-chan paho.Message) {
	t.Helper()
	msgs := make(chan paho.Message, 64)
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + n.info.MQTTAddr).
		SetClientID(id).
		SetUsername(hc.host + "/" + id + "/?api-version=2021-04-12").
		SetPassword(token).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).
		SetTLSConfig(&tls.Config{RootCAs: hc.roots, ServerName: hc.host}).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { msgs <- m })
	cl := paho.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(liveWait) || tok.Error() != nil {
		t.Fatalf("device %s on %s: connect: %v", id, n.name, tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	for _, f := range []string{"devices/" + id + "/messages/devicebound/#", "$iothub/twin/PATCH/properties/desired/#"} {
		if tok := cl.Subscribe(f, 1, nil); !tok.WaitTimeout(liveWait) || tok.Error() != nil {
			t.Fatalf("device %s: subscribe %s: %v", id, f, tok.Error())
		}
	}
	// Direct methods: answered at once with the method's name and payload.
	answer := func(c paho.Client, m paho.Message) {
		name, query, _ := strings.Cut(strings.TrimPrefix(m.Topic(), "$iothub/methods/POST/"), "/?")
		rid := strings.TrimPrefix(query, "$rid=")
		body := `{"method":"` + name + `","got":` + string(m.Payload()) + `}`
		c.Publish("$iothub/methods/res/200/?$rid="+rid, 0, false, body)
	}
	if tok := cl.Subscribe("$iothub/methods/POST/#", 0, answer); !tok.WaitTimeout(liveWait) || tok.Error() != nil {
		t.Fatalf("device %s: subscribe to methods: %v", id, tok.Error())
	}
	return cl, msgs
}

func nextMessage(t *testing.T, msgs <-chan paho.Message, what string) paho.Message {
	t.Helper()
	select {
	case m := <-msgs:
		return m
	case <-time.After(liveWait):
		t.Fatalf("%s: nothing arrived", what)
		return nil
	}
}

// httpDevice makes requests of the device HTTPS API of the hub on node n.
func (hc *hubCluster) httpDevice(t *testing.T, n *node, token, method, path string) (int, http.Header, string) {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: hc.roots, ServerName: hc.host},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, n.info.HTTPSAddr)
		},
	}
	defer tr.CloseIdleConnections()
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	req, err := http.NewRequest(method, "https://"+hc.host+path+sep+"api-version=2020-09-30", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", token)
	resp, err := (&http.Client{Transport: tr, Timeout: requestTimeout}).Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, n.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, string(body)
}

// feedbackReceiver attaches a service's feedback link to the hub on node
// n, as the azure-iothub Client does, and returns the records that arrive.
func (hc *hubCluster) feedbackReceiver(t *testing.T, n *node) <-chan map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveWait)
	defer cancel()
	sess := hc.serviceSession(t, ctx, n, hc.host, hc.host, "service")
	r, err := sess.NewReceiver(ctx, "/messages/serviceBound/feedback", nil)
	if err != nil {
		t.Fatalf("feedback link on %s: %v", n.name, err)
	}
	out := make(chan map[string]string, 64)
	go func() {
		for {
			m, err := r.Receive(context.Background(), nil)
			if err != nil {
				return
			}
			_ = r.AcceptMessage(context.Background(), m)
			var recs []map[string]string
			if json.Unmarshal(m.GetData(), &recs) != nil {
				continue
			}
			for _, rec := range recs {
				out <- rec
			}
		}
	}()
	return out
}

// serviceSession opens an AMQP session to the hub on node n as a service
// client: anonymous SASL, then a put-token on $cbs signed for
// tokenResource by the hub's iothubowner policy and named name. what
// names the client in failures.
func (hc *hubCluster) serviceSession(t *testing.T, ctx context.Context, n *node, tokenResource, name, what string) *goamqp.Session {
	t.Helper()
	conn, err := goamqp.Dial(ctx, "amqps://"+n.info.AMQPAddr, &goamqp.ConnOptions{
		HostName: hc.host, TLSConfig: &tls.Config{RootCAs: hc.roots, ServerName: hc.host}, SASLType: goamqp.SASLTypeAnonymous(),
	})
	if err != nil {
		t.Fatalf("%s AMQP on %s: %v", what, n.name, err)
	}
	t.Cleanup(func() { conn.Close() })
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cbsOut, err := sess.NewSender(ctx, "$cbs", nil)
	if err != nil {
		t.Fatal(err)
	}
	cbsIn, err := sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sas.New(tokenResource, "iothubowner", hc.ownerKey, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	m := &goamqp.Message{Value: tok}
	reply := "cbs-reply"
	m.Properties = &goamqp.MessageProperties{MessageID: "put-1", ReplyTo: &reply}
	m.ApplicationProperties = map[string]any{"operation": "put-token", "name": name, "type": "servicebus.windows.net:sastoken"}
	if err := cbsOut.Send(ctx, m, nil); err != nil {
		t.Fatal(err)
	}
	ans, err := cbsIn.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := ans.ApplicationProperties["status-code"].(int32); code != 200 && code != 202 {
		t.Fatalf("%s put-token on %s: %v", what, n.name, ans.ApplicationProperties)
	}
	return sess
}

func nextFeedback(t *testing.T, fb <-chan map[string]string, what string) map[string]string {
	t.Helper()
	select {
	case rec := <-fb:
		return rec
	case <-time.After(liveWait):
		t.Fatalf("%s: no feedback arrived", what)
		return nil
	}
}

// TestHubSharedAcrossNodes runs a built-in hub on two nodes over
// PostgreSQL: a hub created through one runs on the other without a
// restart; a cloud-to-device message sent through node A reaches a device
// connected to node B at once, and the feedback of its completion reaches
// a feedback receiver on node A; a message received over HTTPS through
// one node is completed, rejected or abandoned through the other, with its
// lock and delivery count honoured; a desired-property update made
// through A reaches the device on B, and so does a direct method invoked
// through A, whose answer comes back through A.
func TestHubSharedAcrossNodes(t *testing.T) {
	hc := startHubCluster(t)
	a, b := hc.nodes[0], hc.nodes[1]
	fb := hc.feedbackReceiver(t, a)

	// MQTT device on B, message sent through A.
	token := hc.device(t, a, "mn-mqtt")
	_, msgs := hc.mqttDevice(t, b, "mn-mqtt", token)
	hc.cli(t, a, "hub", "c2d-message", "send", "-n", hc.name, "-d", "mn-mqtt", "--data", "live across nodes", "--message-id", "m-1", "--ack", "full")
	if m := nextMessage(t, msgs, "cloud-to-device message sent through A to the device on B"); string(m.Payload()) != "live across nodes" {
		t.Fatalf("the device on B got %s %q", m.Topic(), m.Payload())
	}
	// The device's PUBACK completes it on B; the feedback goes out on A.
	if rec := nextFeedback(t, fb, "completion on B"); rec["originalMessageId"] != "m-1" || rec["statusCode"] != "Success" || rec["deviceId"] != "mn-mqtt" {
		t.Errorf("feedback of the completion: %v", rec)
	}

	// Desired properties updated through A reach the device on B.
	hc.cli(t, a, "hub", "device-twin", "update", "-n", hc.name, "-d", "mn-mqtt", "--desired", `{"interval":7}`)
	if m := nextMessage(t, msgs, "desired-property update made through A"); !strings.HasPrefix(m.Topic(), "$iothub/twin/PATCH/properties/desired/") ||
		!strings.Contains(string(m.Payload()), `"interval":7`) {
		t.Errorf("the device on B got %s %q", m.Topic(), m.Payload())
	}

	// A direct method invoked through A reaches the device on B, and its
	// answer comes back through A; one for a device connected nowhere
	// is refused as offline.
	out := hc.cli(t, a, "hub", "invoke-device-method", "-n", hc.name, "-d", "mn-mqtt", "--method-name", "reboot", "--method-payload", `{"delay":3}`, "-o", "json")
	var res struct {
		Status  int `json:"status"`
		Payload struct {
			Method string `json:"method"`
			Got    struct {
				Delay int `json:"delay"`
			} `json:"got"`
		} `json:"payload"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Status != 200 || res.Payload.Method != "reboot" || res.Payload.Got.Delay != 3 {
		t.Errorf("direct method through A for the device on B answered (%v):\n%s", err, out)
	}
	hc.cli(t, a, "hub", "device-identity", "create", "-n", hc.name, "-d", "mn-offline")
	if out, err := runCLI(t, "hub", "invoke-device-method", "-n", hc.name, "-d", "mn-offline", "--method-name", "reboot",
		"--data-dir", a.DataDir, "--ca-file", hc.caFile); err == nil || !strings.Contains(err.Error()+out, "DeviceNotOnline") && !strings.Contains(err.Error()+out, "not online") {
		t.Errorf("direct method for a device connected nowhere: %v\n%s", err, out)
	}

	// HTTPS device: received through one node, settled through the other.
	htok := hc.device(t, b, "mn-http")
	for _, id := range []string{"h-complete", "h-reject", "h-abandon"} {
		hc.cli(t, a, "hub", "c2d-message", "send", "-n", hc.name, "-d", "mn-http", "--data", id, "--message-id", id, "--ack", "full")
	}
	receive := func(n *node, want string, deliveries string) string {
		t.Helper()
		status, h, body := hc.httpDevice(t, n, htok, http.MethodGet, "/devices/mn-http/messages/deviceBound")
		if status != http.StatusOK || body != want || h.Get("Iothub-Deliverycount") != deliveries {
			t.Fatalf("receive on %s: %d %q delivery count %q; want %q, delivery %s", n.name, status, body, h.Get("Iothub-Deliverycount"), want, deliveries)
		}
		return strings.Trim(h.Get("ETag"), `"`)
	}
	settle := func(n *node, method, lock, suffix string, want int) {
		t.Helper()
		if status, _, body := hc.httpDevice(t, n, htok, method, "/devices/mn-http/messages/deviceBound/"+lock+suffix); status != want {
			t.Fatalf("%s %s on %s: %d %s, want %d", method, suffix, n.name, status, body, want)
		}
	}
	lock := receive(a, "h-complete", "0")
	// Locked on A: B offers the next one.
	next := receive(b, "h-reject", "0")
	settle(b, http.MethodDelete, lock, "", http.StatusNoContent)
	if rec := nextFeedback(t, fb, "completion through B"); rec["originalMessageId"] != "h-complete" || rec["statusCode"] != "Success" {
		t.Errorf("feedback of the completion through B: %v", rec)
	}
	settle(a, http.MethodDelete, lock, "", http.StatusPreconditionFailed) // already completed
	settle(a, http.MethodDelete, next, "?reject", http.StatusNoContent)
	if rec := nextFeedback(t, fb, "rejection through A"); rec["originalMessageId"] != "h-reject" || rec["statusCode"] != "Rejected" {
		t.Errorf("feedback of the rejection through A: %v", rec)
	}
	lock = receive(b, "h-abandon", "0")
	settle(a, http.MethodPost, lock, "/abandon", http.StatusNoContent)
	lock = receive(a, "h-abandon", "1")
	settle(b, http.MethodDelete, lock, "", http.StatusNoContent)
	if rec := nextFeedback(t, fb, "completion after an abandon"); rec["originalMessageId"] != "h-abandon" || rec["statusCode"] != "Success" {
		t.Errorf("feedback after the abandon: %v", rec)
	}
	if status, _, body := hc.httpDevice(t, a, htok, http.MethodGet, "/devices/mn-http/messages/deviceBound"); status != http.StatusNoContent {
		t.Errorf("the queue after settling everything: %d %q", status, body)
	}
}
