package builtinhub_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/dpsd/dpsd/internal/eventhub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// ownAddrPrefix is the loopback range of the tests of hubs with their own
// address and AMQP listener, apart from the other tests'; test/e2e takes
// its low host numbers.
const ownAddrPrefix = "127.0.26"

// sendTelemetry sends one message with id on a device's telemetry link.
func (c *amqpClient) sendTelemetry(deviceID, id, body string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	snd, err := c.sess.NewSender(ctx, "/devices/"+deviceID+"/messages/events", nil)
	if err != nil {
		c.t.Fatalf("telemetry link: %v", err)
	}
	m := goamqp.NewMessage([]byte(body))
	m.Properties = &goamqp.MessageProperties{MessageID: id}
	if err := snd.Send(ctx, m, nil); err != nil {
		c.t.Fatalf("send %s: %v", id, err)
	}
	_ = snd.Close(ctx)
}

// TestOwnAddressHubAMQP drives the AMQP listener of a hub with an address
// of its own with an independent client (go-amqp): device telemetry over
// AMQP and AMQP over WebSockets (/$iothub/websocket on the hub's HTTPS
// listener), read back through the Event Hubs-compatible endpoint on the
// same address over TLS and WebSockets (/$servicebus/websocket), whose
// redirect names the hub's AMQP port; the listener comes back after a
// restart and is gone, with its connections, after the hub is deleted.
func TestOwnAddressHubAMQP(t *testing.T) {
	e := newEnv(t, nil)
	const name, dev = "own-amqp-hub", "sensor-1"
	ip := ownAddrPrefix + ".201"
	h := e.createHub(name, ip)
	createDevice(t, h, dev)
	host := h.Config().HostName

	in, err := e.m.Info(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	amqpHost, amqpPort, err := net.SplitHostPort(in.AMQPAddr)
	if err != nil || amqpHost != ip || in.AMQPAddr != h.AMQPAddr() {
		t.Fatalf("hub info's AMQP address %q (%v), want one on %s", in.AMQPAddr, err, ip)
	}
	if want := "Endpoint=sb://" + host + ":" + amqpPort + "/;SharedAccessKeyName=service;"; !strings.HasPrefix(in.EventHubConnectionString, want) ||
		!strings.HasSuffix(in.EventHubConnectionString, ";EntityPath="+name) {
		t.Fatalf("Event Hubs connection string %q, want %s…;EntityPath=%s", in.EventHubConnectionString, want, name)
	}

	// A device that names its hub by host name, over AMQP over TLS.
	c := dialHubAMQP(t, e, h.AMQPAddr(), host)
	if code := c.putToken("devices/"+dev, testKey1); code != 200 {
		t.Fatalf("device put-token over AMQP: %d", code)
	}
	c.sendTelemetry(dev, "amqp-1", `{"t":1}`)

	// One that dialled the address (GatewayHostName=<IP>): no host name in
	// TLS or the open frame, the connection is the hub's all the same.
	ws := newAMQPClient(t, dialAMQPWebSocket(t, e, h.HTTPSAddr(), ip, "/$iothub/websocket", goamqp.SASLTypeAnonymous()), host)
	if code := ws.putToken("devices/"+dev, testKey1); code != 200 {
		t.Fatalf("device put-token over AMQP/WS: %d", code)
	}
	ws.sendTelemetry(dev, "ws-1", `{"t":2}`)
	if got := h.Messages(dev, 0, 0); len(got) != 2 {
		t.Fatalf("hub kept %d messages, want 2: %+v", len(got), got)
	}

	// The Event Hubs-compatible endpoint on the hub's AMQP listener.
	service := policyKey(t, h, "service")
	part := eventhub.PartitionOf(dev, eventhub.DefaultPartitions)
	conn, err := goamqp.Dial(context.Background(), "amqps://"+h.AMQPAddr(), &goamqp.ConnOptions{
		HostName: host, TLSConfig: e.tlsConfig(host), SASLType: goamqp.SASLTypeAnonymous(),
	})
	if err != nil {
		t.Fatal(err)
	}
	eh := newEHClient(t, conn, h)
	if code := eh.putToken("sb://"+host+"/other-hub", "service", service); code != 401 {
		t.Errorf("another entity on the hub's own listener: status %d, want 401", code)
	}
	if code := eh.putToken("sb://"+host+"/"+name, "service", service); code != 202 {
		t.Fatalf("Event Hubs put-token: status %d, want 202", code)
	}
	r, err := eh.receiver("$Default", part, "")
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range receive(t, r, 2) {
		if want := []string{"amqp-1", "ws-1"}[i]; m.Properties == nil || m.Properties.MessageID != want || m.Annotations["iothub-connection-device-id"] != dev {
			t.Errorf("event %d: %+v %v, want %s from %s", i, m.Properties, m.Annotations, want, dev)
		}
	}

	// And over WebSockets on the hub's HTTPS listener.
	ehWS := newEHClient(t, dialAMQPWebSocket(t, e, h.HTTPSAddr(), host, "/$servicebus/websocket", goamqp.SASLTypeAnonymous()), h)
	if code := ehWS.putToken("sb://"+host+"/"+name, "service", service); code != 202 {
		t.Fatalf("Event Hubs put-token over WebSockets: status %d, want 202", code)
	}
	rw, err := ehWS.receiver("$Default", part, "amqp.annotation.x-opt-sequence-number >= '1'")
	if err != nil {
		t.Fatal(err)
	}
	if m := receive(t, rw, 1)[0]; m.Properties == nil || m.Properties.MessageID != "ws-1" {
		t.Errorf("event over WebSockets: %+v, want ws-1", m.Properties)
	}

	// The redirect, asked over WebSockets, names the hub's AMQP port.
	tok, err := sas.New(url.QueryEscape(host+"/messages/events"), "service", service, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rc := dialAMQPWebSocket(t, e, h.HTTPSAddr(), host, "/$servicebus/websocket", goamqp.SASLTypePlain("service@sas.root."+name, tok))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := rc.NewSession(ctx, nil)
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
	if info := le.RemoteErr.Info; fmt.Sprint(info["port"]) != amqpPort || info["address"] != "amqps://"+host+":"+amqpPort+"/"+name+"/$management" {
		t.Errorf("redirect info %v, want the hub's AMQP port %s", info, amqpPort)
	}

	// After a restart the listener is back (on a port of its own again)
	// with the telemetry kept.
	e.restart()
	h = e.hub(name)
	c = dialHubAMQP(t, e, h.AMQPAddr(), host)
	if code := c.putToken("devices/"+dev, testKey1); code != 200 {
		t.Fatalf("device put-token after restart: %d", code)
	}
	c.sendTelemetry(dev, "amqp-2", `{"t":3}`)
	if got := h.Messages(dev, 0, 0); len(got) != 3 || got[2].SystemProperties["messageId"] != "amqp-2" {
		t.Fatalf("after restart the hub has %+v", got)
	}

	// Deleted: the listener is closed, and so are its connections.
	amqpAddr := h.AMQPAddr()
	if err := e.m.Delete(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	if nc, err := net.DialTimeout("tcp", amqpAddr, 5*time.Second); err == nil {
		nc.Close()
		t.Fatalf("the deleted hub's AMQP listener %s still accepts connections", amqpAddr)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	snd, err := c.sess.NewSender(sctx, "/devices/"+dev+"/messages/events", nil)
	if err == nil {
		err = snd.Send(sctx, goamqp.NewMessage([]byte("late")), nil)
	}
	if err == nil {
		t.Fatal("a connection to the deleted hub still takes telemetry")
	}
}

// TestOwnAddressHubAMQPBindFailure: a hub whose AMQP port is taken on its
// address is not created, the error says why, and the HTTPS and MQTT
// listeners bound before it are let go.
func TestOwnAddressHubAMQPBindFailure(t *testing.T) {
	ip := ownAddrPrefix + ".202"
	freePort := func() string {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, port, _ := net.SplitHostPort(l.Addr().String())
		return port
	}
	httpsPort, mqttPort := freePort(), freePort()
	taken, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, amqpPort, _ := net.SplitHostPort(taken.Addr().String())
	e := newEnv(t, func(o *builtinhub.Options) { o.HTTPSPort, o.MQTTPort, o.AMQPPort = httpsPort, mqttPort, amqpPort })
	_, err = e.m.Create(context.Background(), "busy-amqp-hub", builtinhub.CreateOptions{Address: ip})
	if !errors.Is(err, builtinhub.ErrInvalid) || !strings.Contains(err.Error(), taken.Addr().String()) || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("create: %v, want the AMQP address %s named as in use", err, taken.Addr())
	}
	if _, err := e.m.Info(context.Background(), "busy-amqp-hub"); !errors.Is(err, builtinhub.ErrHubNotFound) {
		t.Errorf("a hub that could not listen was kept: %v", err)
	}
	for _, port := range []string{httpsPort, mqttPort} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
		if err != nil {
			t.Errorf("port %s after the failed create: %v", port, err)
			continue
		}
		l.Close()
	}
}
