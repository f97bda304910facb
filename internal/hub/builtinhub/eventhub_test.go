package builtinhub_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
	"github.com/gorilla/websocket"

	"github.com/dpsd/dpsd/internal/eventhub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
)

// eventHubEnv is a shared-endpoint env on 127.0.18.1 (HTTPS, MQTT and
// AMQP listeners on ephemeral ports) with one hub and a device.
func eventHubEnv(t *testing.T, hubName, deviceID string) (*env, *builtinhub.Shared, *builtinhub.Hub) {
	t.Helper()
	return eventHubEnvAt(t, "127.0.18.1", hubName, deviceID)
}

// eventHubEnvAt is eventHubEnv with the listeners on ip.
func eventHubEnvAt(t *testing.T, ip, hubName, deviceID string) (*env, *builtinhub.Shared, *builtinhub.Hub) {
	t.Helper()
	e, shared := sharedEnvAt(t, ip)
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
	serviceCS := sas.ConnectionString{HostName: h.Config().HostName, SharedAccessKeyName: "service", SharedAccessKey: policyKey(t, h, "service")}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-concurrency=1", "hub-eventhub.test.js")
	cmd.Dir = sdkDir
	cmd.Env = append(os.Environ(),
		"DPSD_HUB_DEVICE_CONNECTION_STRING="+deviceCS.String(),
		"DPSD_HUB_EVENTHUB_CONNECTION_STRING="+in.EventHubConnectionString,
		"DPSD_HUB_SERVICE_CONNECTION_STRING="+serviceCS.String(),
		"DPSD_HUB_AMQP_PORT="+amqpPort,
		"DPSD_HUB_IP="+shared.Address,
		"NODE_EXTRA_CA_CERTS="+e.ca.CertFile(),
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test hub-eventhub.test.js:\n%s", out)
	if err != nil {
		t.Fatalf("node tests failed: %v", err)
	}
	if !strings.Contains(string(out), "# pass 5") {
		t.Fatal("node tests were skipped")
	}
}

// ehClient is a go-amqp connection to a hub's Event Hubs-compatible
// endpoint, with a $cbs request/reply pair.
type ehClient struct {
	t      *testing.T
	sess   *goamqp.Session
	cbsOut *goamqp.Sender
	cbsIn  *goamqp.Receiver
	host   string
	name   string
}

func dialEventHub(t *testing.T, e *env, shared *builtinhub.Shared, h *builtinhub.Hub) *ehClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	host := h.Config().HostName
	conn, err := goamqp.Dial(ctx, "amqps://"+shared.AMQPAddr, &goamqp.ConnOptions{
		HostName: host, TLSConfig: e.tlsConfig(host), SASLType: goamqp.SASLTypeAnonymous(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return newEHClient(t, conn, h)
}

// newEHClient opens a session and the $cbs pair on conn, closed when the
// test ends.
func newEHClient(t *testing.T, conn *goamqp.Conn, h *builtinhub.Hub) *ehClient {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	host := h.Config().HostName
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &ehClient{t: t, sess: sess, host: host, name: h.Name()}
	if c.cbsOut, err = sess.NewSender(ctx, "$cbs", nil); err != nil {
		t.Fatal(err)
	}
	if c.cbsIn, err = sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// request sends a request on out and returns the answer on in.
func request(t *testing.T, out *goamqp.Sender, in *goamqp.Receiver, m *goamqp.Message) *goamqp.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := out.Send(ctx, m, nil); err != nil {
		t.Fatal(err)
	}
	ans, err := in.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = in.AcceptMessage(ctx, ans)
	return ans
}

// putToken puts a token of policy on $cbs for audience and returns the
// answer's status code.
func (c *ehClient) putToken(audience, policy, key string) int32 {
	c.t.Helper()
	tok, err := sas.New(url.QueryEscape(audience), policy, key, time.Now().Add(time.Hour))
	if err != nil {
		c.t.Fatal(err)
	}
	m := goamqp.NewMessage(nil)
	m.Value = tok
	m.Properties = &goamqp.MessageProperties{MessageID: "put-1", ReplyTo: ptr("cbs-reply")}
	m.ApplicationProperties = map[string]any{"operation": "put-token", "name": audience, "type": "servicebus.windows.net:sastoken"}
	ans := request(c.t, c.cbsOut, c.cbsIn, m)
	code, _ := ans.ApplicationProperties["status-code"].(int32)
	return code
}

func ptr[T any](v T) *T { return &v }

// receiver attaches to a partition with a selector filter ("" for none)
// and manual credit; it returns the error of a refused attach.
func (c *ehClient) receiver(group string, partition int, selector string) (*goamqp.Receiver, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o := &goamqp.ReceiverOptions{Credit: -1}
	if selector != "" {
		o.Filters = []goamqp.LinkFilter{goamqp.NewSelectorFilter(selector)}
	}
	return c.sess.NewReceiver(ctx, fmt.Sprintf("%s/ConsumerGroups/%s/Partitions/%d", c.name, group, partition), o)
}

// receive issues credit n and receives n events.
func receive(t *testing.T, r *goamqp.Receiver, n int) []*goamqp.Message {
	t.Helper()
	if err := r.IssueCredit(uint32(n)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*goamqp.Message
	for range n {
		m, err := r.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("receiving event %d of %d: %v", len(out)+1, n, err)
		}
		_ = r.AcceptMessage(ctx, m)
		out = append(out, m)
	}
	return out
}

func refusedWith(t *testing.T, err error, cond goamqp.ErrCond) {
	t.Helper()
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != cond {
		t.Errorf("attach: %v, want it refused with %s", err, cond)
	}
}

// TestEventHubEndpointOverAMQP drives the endpoint with an independent
// AMQP client (go-amqp): claims, refusals, credit, start positions and the
// events' annotations.
func TestEventHubEndpointOverAMQP(t *testing.T) {
	e, shared, h := eventHubEnv(t, "eventhub-wire-hub", "thermo-1")
	host := h.Config().HostName
	dc, _, err := dialDevice(t, e, "thermo-1", dialOpts{host: host, addr: shared.MQTTAddr, tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		dc.publish(t, fmt.Sprintf("devices/thermo-1/messages/events/$.mid=m%d&$.ct=application%%2Fjson&k=v%d", i, i), 1, fmt.Sprintf(`{"n":%d}`, i))
	}
	for len(h.Messages("thermo-1", 0, 0)) < 3 {
		time.Sleep(20 * time.Millisecond)
	}
	p := eventhub.PartitionOf("thermo-1", eventhub.DefaultPartitions)
	c := dialEventHub(t, e, shared, h)

	// No token yet; then a wrong key, and a token for another entity.
	_, err = c.receiver("$Default", p, "")
	refusedWith(t, err, goamqp.ErrCondUnauthorizedAccess)
	service := policyKey(t, h, "service")
	if code := c.putToken("sb://"+host+"/"+h.Name(), "service", testKey1); code != 401 {
		t.Errorf("wrong key: status %d, want 401", code)
	}
	if code := c.putToken("sb://"+host+"/other-hub", "service", service); code != 401 {
		t.Errorf("unknown entity: status %d, want 401", code)
	}
	if code := c.putToken("sb://"+host+"/"+h.Name()+"/ConsumerGroups/$Default/Partitions/0", "service", service); code != 202 {
		t.Fatalf("put-token: status %d, want 202", code)
	}

	// Refusals a consumer can act on.
	_, err = c.receiver("$Default", p, "amqp.annotation.x-opt-offset < '1'")
	refusedWith(t, err, goamqp.ErrCondInvalidField)
	_, err = c.receiver("other-group", p, "")
	refusedWith(t, err, goamqp.ErrCondNotFound)
	_, err = c.receiver("$Default", eventhub.DefaultPartitions, "")
	refusedWith(t, err, goamqp.ErrCondNotFound)

	// From the start, one credit at a time: nothing beyond the credit.
	r, err := c.receiver("$Default", p, "amqp.annotation.x-opt-offset > '-1'")
	if err != nil {
		t.Fatal(err)
	}
	first := receive(t, r, 1)[0]
	time.Sleep(200 * time.Millisecond)
	if m := r.Prefetched(); m != nil {
		t.Fatalf("an event beyond the credit: %v", m.Annotations)
	}
	rest := receive(t, r, 2)
	all := append([]*goamqp.Message{first}, rest...)
	for i, m := range all {
		a := m.Annotations
		if a["x-opt-sequence-number"] != int64(i) || a["iothub-connection-device-id"] != "thermo-1" ||
			m.Properties == nil || m.Properties.MessageID != fmt.Sprintf("m%d", i) || m.ApplicationProperties["k"] != fmt.Sprintf("v%d", i) ||
			string(m.GetData()) != fmt.Sprintf(`{"n":%d}`, i) || *m.Properties.ContentType != "application/json" {
			t.Errorf("event %d: annotations %v, properties %+v, application properties %v, body %q", i, a, m.Properties, m.ApplicationProperties, m.GetData())
		}
		if _, ok := a["x-opt-enqueued-time"].(time.Time); !ok {
			t.Errorf("event %d: x-opt-enqueued-time %T", i, a["x-opt-enqueued-time"])
		}
		if _, ok := a["x-opt-offset"].(string); !ok {
			t.Errorf("event %d: x-opt-offset %T", i, a["x-opt-offset"])
		}
	}
	off1 := all[1].Annotations["x-opt-offset"].(string)
	t1 := all[1].Annotations["x-opt-enqueued-time"].(time.Time)
	// Events enqueued in the same millisecond as the second are after
	// t1-1 ms too: the first such is where a time position starts.
	afterTime := int64(1)
	if all[0].Annotations["x-opt-enqueued-time"].(time.Time).UnixMilli() == t1.UnixMilli() {
		afterTime = 0
	}

	// The other start positions.
	for _, tc := range []struct {
		selector string
		wantSeq  int64
	}{
		{"amqp.annotation.x-opt-sequence-number > '0'", 1},
		{"amqp.annotation.x-opt-sequence-number >= '2'", 2},
		{"amqp.annotation.x-opt-offset >= '" + off1 + "'", 1},
		{"amqp.annotation.x-opt-offset > '" + off1 + "'", 2},
		{fmt.Sprintf("amqp.annotation.x-opt-enqueued-time > '%d'", t1.UnixMilli()-1), afterTime},
		{"", 0},
	} {
		r, err := c.receiver("$Default", p, tc.selector)
		if err != nil {
			t.Fatalf("%q: %v", tc.selector, err)
		}
		if got := receive(t, r, 1)[0].Annotations["x-opt-sequence-number"]; got != tc.wantSeq {
			t.Errorf("%q: first event %v, want %d", tc.selector, got, tc.wantSeq)
		}
		_ = r.Close(context.Background())
	}

	// '@latest': only what comes after the attach.
	latest, err := c.receiver("$Default", p, "amqp.annotation.x-opt-offset > '@latest'")
	if err != nil {
		t.Fatal(err)
	}
	dc.publish(t, "devices/thermo-1/messages/events/$.mid=m3", 1, "late")
	if m := receive(t, latest, 1)[0]; m.Properties.MessageID != "m3" || m.Annotations["x-opt-sequence-number"] != int64(3) {
		t.Errorf("latest: %v %v", m.Properties.MessageID, m.Annotations)
	}

	// $management: the partition's properties.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mOut, err := c.sess.NewSender(ctx, "$management", nil)
	if err != nil {
		t.Fatal(err)
	}
	mIn, err := c.sess.NewReceiver(ctx, "$management", &goamqp.ReceiverOptions{Name: "mgmt-reply", TargetAddress: "mgmt-reply"})
	if err != nil {
		t.Fatal(err)
	}
	req := goamqp.NewMessage(nil)
	req.Properties = &goamqp.MessageProperties{MessageID: "r-1", ReplyTo: ptr("mgmt-reply")}
	req.ApplicationProperties = map[string]any{"operation": "READ", "name": h.Name(), "type": "com.microsoft:partition", "partition": fmt.Sprint(p)}
	ans := request(t, mOut, mIn, req)
	body, _ := ans.Value.(map[string]any)
	if ans.ApplicationProperties["status-code"] != int32(200) || body["begin_sequence_number"] != int64(0) ||
		body["last_enqueued_sequence_number"] != int64(3) || body["is_partition_empty"] != false || body["partition"] != fmt.Sprint(p) {
		t.Errorf("partition properties: %v %v", ans.ApplicationProperties, ans.Value)
	}
	req.Properties.MessageID = "r-2"
	req.ApplicationProperties = map[string]any{"operation": "READ", "name": "no-such-hub", "type": "com.microsoft:eventhub"}
	if ans := request(t, mOut, mIn, req); ans.ApplicationProperties["status-code"] != int32(404) {
		t.Errorf("unknown entity: %v", ans.ApplicationProperties)
	}
}

// policyKey returns a hub policy's primary key.
func policyKey(t *testing.T, h *builtinhub.Hub, name string) string {
	t.Helper()
	for _, p := range h.Config().Policies {
		if p.KeyName == name {
			return p.PrimaryKey
		}
	}
	t.Fatalf("hub %s has no policy %s", h.Name(), name)
	return ""
}

// TestEventHubRedirect checks the way samples and SDK helpers find the
// endpoint from an IoT hub connection string: a receiver on messages/events,
// signed in with SASL PLAIN, is refused with amqp:link:redirect naming it.
func TestEventHubRedirect(t *testing.T) {
	e, shared, h := eventHubEnv(t, "eventhub-redirect-hub", "thermo-2")
	host := h.Config().HostName
	// dial signs in to the endpoint at hostname (the hub's host name, or
	// the address a client dialled, which names no hub).
	dial := func(key string, hostname ...string) *goamqp.Session {
		tok, err := sas.New(url.QueryEscape(host+"/messages/events"), "service", key, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		name := host
		if len(hostname) > 0 {
			name = hostname[0]
		}
		conn, err := goamqp.Dial(ctx, "amqps://"+shared.AMQPAddr, &goamqp.ConnOptions{
			HostName: name, TLSConfig: e.tlsConfig(name), SASLType: goamqp.SASLTypePlain("service@sas.root."+h.Name(), tok),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		sess, err := conn.NewSession(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		return sess
	}
	// The receiver opens, and is detached with the answer once it grants
	// credit.
	attach := func(sess *goamqp.Session) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := sess.NewReceiver(ctx, "amqps://"+host+"/messages/events/$management", nil)
		if err != nil {
			return err
		}
		_, err = r.Receive(ctx, nil)
		return err
	}

	err := attach(dial(policyKey(t, h, "service")))
	var le *goamqp.LinkError
	if !errors.As(err, &le) || le.RemoteErr == nil || le.RemoteErr.Condition != "amqp:link:redirect" {
		t.Fatalf("receive: %v, want amqp:link:redirect", err)
	}
	ae := le.RemoteErr
	_, port, _ := net.SplitHostPort(shared.AMQPAddr)
	if ae.Info["hostname"] != host || ae.Info["address"] != "amqps://"+host+":"+port+"/eventhub-redirect-hub/$management" || fmt.Sprint(ae.Info["port"]) != port {
		t.Errorf("redirect info %v", ae.Info)
	}
	// By the address: the SASL user names the hub, the redirect the address.
	err = attach(dial(policyKey(t, h, "service"), shared.Address))
	if !errors.As(err, &le) || le.RemoteErr == nil || le.RemoteErr.Condition != "amqp:link:redirect" {
		t.Fatalf("receive by address: %v, want amqp:link:redirect", err)
	}
	if ae := le.RemoteErr; ae.Info["hostname"] != shared.Address || ae.Info["address"] != "amqps://"+shared.AMQPAddr+"/eventhub-redirect-hub/$management" {
		t.Errorf("redirect info by address %v", ae.Info)
	}
	if err := attach(dial(testKey1)); !errors.As(err, &le) || le.RemoteErr == nil || le.RemoteErr.Condition != goamqp.ErrCondUnauthorizedAccess {
		t.Errorf("a wrong key: %v, want amqp:unauthorized-access", err)
	}
}

// dialAMQPWebSocket opens AMQP over a WebSocket to the HTTPS listener at
// httpsAddr, path, as the Event Hubs clients do with webSocketOptions;
// host is the TLS server name and the open frame's host name.
func dialAMQPWebSocket(t *testing.T, e *env, httpsAddr, host, path string, sasl goamqp.SASLType) *goamqp.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d := websocket.Dialer{
		TLSClientConfig:  e.tlsConfig(host),
		Subprotocols:     []string{"AMQPWSB10"},
		HandshakeTimeout: 10 * time.Second,
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
		},
	}
	ws, resp, err := d.DialContext(ctx, "wss://"+host+path, nil)
	if err != nil {
		t.Fatalf("WebSocket upgrade: %v", err)
	}
	resp.Body.Close()
	if ws.Subprotocol() != "AMQPWSB10" {
		t.Fatalf("subprotocol %q", ws.Subprotocol())
	}
	conn, err := goamqp.NewConn(ctx, wsconn.NewConn(ws), &goamqp.ConnOptions{HostName: host, SASLType: sasl})
	if err != nil {
		t.Fatalf("AMQP over the WebSocket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestEventHubEndpointOverWebSockets reads the endpoint over AMQP over
// WebSockets, as @azure/event-hubs and Azure.Messaging.EventHubs do with
// webSocketOptions: wss://{host}/$servicebus/websocket on the hubs' HTTPS
// listener, subprotocol AMQPWSB10, the hub told by the TLS server name.
// The redirect a client gets over WebSockets names the AMQP listener, not
// the HTTPS port it asked on.
func TestEventHubEndpointOverWebSockets(t *testing.T) {
	e, shared, h := eventHubEnvAt(t, "127.0.22.2", "eventhub-ws-hub", "thermo-ws")
	host := h.Config().HostName
	dc, _, err := dialDevice(t, e, "thermo-ws", dialOpts{host: host, addr: shared.MQTTAddr, tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.publish(t, "devices/thermo-ws/messages/events/$.mid=ws-1&k=v", 1, `{"t":19.5}`)

	service := policyKey(t, h, "service")
	c := newEHClient(t, dialAMQPWebSocket(t, e, shared.HTTPSAddr, host, "/$servicebus/websocket", goamqp.SASLTypeAnonymous()), h)
	if code := c.putToken("sb://"+host+"/"+h.Name(), "service", service); code != 202 {
		t.Fatalf("put-token over WebSockets: status %d, want 202", code)
	}
	r, err := c.receiver("$Default", eventhub.PartitionOf("thermo-ws", eventhub.DefaultPartitions), "")
	if err != nil {
		t.Fatal(err)
	}
	m := receive(t, r, 1)[0]
	if m.Properties == nil || m.Properties.MessageID != "ws-1" || m.Annotations["iothub-connection-device-id"] != "thermo-ws" ||
		m.ApplicationProperties["k"] != "v" || string(m.GetData()) != `{"t":19.5}` {
		t.Fatalf("event over WebSockets: %+v %v %v %q", m.Properties, m.Annotations, m.ApplicationProperties, m.GetData())
	}

	// The redirect of messages/events, asked over WebSockets.
	tok, err := sas.New(url.QueryEscape(host+"/messages/events"), "service", service, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	conn := dialAMQPWebSocket(t, e, shared.HTTPSAddr, host, "/$servicebus/websocket", goamqp.SASLTypePlain("service@sas.root."+h.Name(), tok))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := sess.NewReceiver(ctx, "amqps://"+host+"/messages/events/$management", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rr.Receive(ctx, nil)
	var le *goamqp.LinkError
	if !errors.As(err, &le) || le.RemoteErr == nil || le.RemoteErr.Condition != "amqp:link:redirect" {
		t.Fatalf("receive: %v, want amqp:link:redirect", err)
	}
	_, port, _ := net.SplitHostPort(shared.AMQPAddr)
	if info := le.RemoteErr.Info; fmt.Sprint(info["port"]) != port || info["address"] != "amqps://"+host+":"+port+"/eventhub-ws-hub/$management" {
		t.Errorf("redirect over WebSockets: info %v, want the AMQP listener's port %s", info, port)
	}
}

// TestEventHubByAddress: a consumer that dials the shared address (no
// TLS server name, the address as its open hostname, as an
// Endpoint=sb://<IP>/ connection string gives) reads the hub its token's
// entity names.
func TestEventHubByAddress(t *testing.T) {
	e, shared, h := eventHubEnvAt(t, "127.0.23.21", "eventhub-address-hub", "thermo-3")
	host := h.Config().HostName
	dc, _, err := dialDevice(t, e, "thermo-3", dialOpts{host: host, addr: shared.MQTTAddr, tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.publish(t, "devices/thermo-3/messages/events/", 1, "by-address")

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := goamqp.Dial(ctx, "amqps://"+shared.AMQPAddr, &goamqp.ConnOptions{
		HostName: shared.Address, TLSConfig: e.tlsConfig(shared.Address), SASLType: goamqp.SASLTypeAnonymous(),
	})
	if err != nil {
		t.Fatal(err)
	}
	c := newEHClient(t, conn, h)
	if code := c.putToken("sb://"+shared.AMQPAddr+"/"+h.Name(), "service", policyKey(t, h, "service")); code != 202 {
		t.Fatalf("put-token for sb://%s/%s: status %d, want 202", shared.AMQPAddr, h.Name(), code)
	}
	r, err := c.receiver("$Default", eventhub.PartitionOf("thermo-3", eventhub.DefaultPartitions), "")
	if err != nil {
		t.Fatal(err)
	}
	if m := receive(t, r, 1)[0]; string(m.GetData()) != "by-address" {
		t.Errorf("event %q", m.GetData())
	}
}
