package builtinhub_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
)

// amqpByAddress is a go-amqp connection to the shared AMQP listener that
// names no hub: no TLS server name (it dials the IP address), the address
// as the open frame's hostname, as a device with GatewayHostName=<IP>.
type amqpByAddress struct {
	t      *testing.T
	sess   *goamqp.Session
	cbsOut *goamqp.Sender
	cbsIn  *goamqp.Receiver
}

func dialByAddress(t *testing.T, e *env, shared *builtinhub.Shared, hostname string, sasl goamqp.SASLType) (*amqpByAddress, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := goamqp.Dial(ctx, "amqps://"+shared.AMQPAddr, &goamqp.ConnOptions{
		HostName: hostname, TLSConfig: e.tlsConfig(shared.Address), SASLType: sasl,
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		return nil, err
	}
	c := &amqpByAddress{t: t, sess: sess}
	if c.cbsOut, err = sess.NewSender(ctx, "$cbs", nil); err != nil {
		return nil, err
	}
	if c.cbsIn, err = sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: "cbs-reply"}); err != nil {
		return nil, err
	}
	return c, nil
}

// putDeviceToken puts a token of device id for resource host/devices/id,
// signed with testKey1, and returns the answer's status and description.
func (c *amqpByAddress) putDeviceToken(host, id string) (int32, string) {
	c.t.Helper()
	aud := host + "/devices/" + id
	tok, err := sas.New(url.QueryEscape(aud), "", testKey1, time.Now().Add(time.Hour))
	if err != nil {
		c.t.Fatal(err)
	}
	m := goamqp.NewMessage([]byte(tok))
	m.Properties = &goamqp.MessageProperties{MessageID: "put-" + id, ReplyTo: ptr("cbs-reply")}
	m.ApplicationProperties = map[string]any{"operation": "put-token", "name": aud, "type": "servicebus.windows.net:sastoken"}
	ans := request(c.t, c.cbsOut, c.cbsIn, m)
	code, _ := ans.ApplicationProperties["status-code"].(int32)
	desc, _ := ans.ApplicationProperties["status-description"].(string)
	return code, desc
}

// send sends one telemetry message as device id.
func (c *amqpByAddress) send(id, body string) error {
	return c.sendTo("/devices/"+id+"/messages/events", body)
}

// sendTo sends one telemetry message on a link to addr.
func (c *amqpByAddress) sendTo(addr, body string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.sess.NewSender(ctx, addr, nil)
	if err != nil {
		return err
	}
	return s.Send(ctx, goamqp.NewMessage([]byte(body)), nil)
}

// TestAMQPByAddress: AMQP connections to the shared address that name no
// hub when they open are their first token's hub, and only its.
func TestAMQPByAddress(t *testing.T) {
	e, shared := sharedEnvAt(t, "127.0.23.20")
	var hubs []*builtinhub.Hub
	for _, name := range []string{"route-a", "route-b"} {
		if _, err := e.m.Create(context.Background(), name, builtinhub.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		h := e.hub(name)
		createDevice(t, h, "dev-twice")
		hubs = append(hubs, h)
	}
	a, b := hubs[0], hubs[1]
	createDevice(t, a, "dev-only-a")
	aHost, bHost := a.Config().HostName, b.Config().HostName

	t.Run("Node: no SASL, token for the hub's host name", func(t *testing.T) {
		c, err := dialByAddress(t, e, shared, shared.Address, nil)
		if err != nil {
			t.Fatal(err)
		}
		if code, desc := c.putDeviceToken(bHost, "dev-twice"); code != 200 {
			t.Fatalf("put-token for hub b: %d %s", code, desc)
		}
		if err := c.send("dev-twice", "by-address-to-b"); err != nil {
			t.Fatal(err)
		}
		waitMessage(t, b, "dev-twice", "by-address-to-b")
		if got := a.Messages("dev-twice", 0, 10); len(got) != 0 {
			t.Errorf("hub a got hub b's telemetry: %+v", got)
		}
		// The connection is hub b's now: a token for hub a is refused.
		code, desc := c.putDeviceToken(aHost, "dev-twice")
		if code != 401 || !strings.Contains(desc, "the token is for hub "+aHost+", but this connection is hub "+bHost+"'s") {
			t.Errorf("put-token for hub a on hub b's connection: %d %s", code, desc)
		}
	})
	t.Run("C SDK: token for the address, one hub has the device", func(t *testing.T) {
		c, err := dialByAddress(t, e, shared, shared.Address, nil)
		if err != nil {
			t.Fatal(err)
		}
		if code, desc := c.putDeviceToken(shared.Address, "dev-only-a"); code != 200 {
			t.Fatalf("put-token for the address: %d %s", code, desc)
		}
		// The C SDK's link address names the host it dialled.
		if err := c.sendTo("amqps://"+shared.Address+"/devices/dev-only-a/messages/events", "by-address-token"); err != nil {
			t.Fatal(err)
		}
		waitMessage(t, a, "dev-only-a", "by-address-token")
		err = c.sendTo("amqps://"+bHost+"/devices/dev-only-a/messages/events", "elsewhere")
		if err == nil || !strings.Contains(err.Error(), "names hub "+bHost+", but this connection is hub "+aHost+"'s") {
			t.Errorf("a link naming hub b on hub a's connection: %v", err)
		}
	})
	t.Run("token for the address, device in two hubs: refused", func(t *testing.T) {
		c, err := dialByAddress(t, e, shared, shared.Address, nil)
		if err != nil {
			t.Fatal(err)
		}
		code, desc := c.putDeviceToken(shared.Address, "dev-twice")
		if code != 401 || !strings.Contains(desc, "device dev-twice of hubs route-a and route-b signed a token for "+shared.Address) {
			t.Fatalf("ambiguous put-token: %d %s", code, desc)
		}
		if err := c.send("dev-twice", "nowhere"); err == nil || !strings.Contains(err.Error(), "amqp:unauthorized-access") {
			t.Errorf("telemetry without a hub: %v", err)
		}
	})
	t.Run("no token: a service link has no hub", func(t *testing.T) {
		c, err := dialByAddress(t, e, shared, shared.Address, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = c.sess.NewSender(ctx, "/messages/devicebound", nil)
		if err == nil || !strings.Contains(err.Error(), "amqp:not-found") || !strings.Contains(err.Error(), "no built-in hub is named by this connection") {
			t.Errorf("service link before any token: %v", err)
		}
	})
	t.Run("SASL user names the hub", func(t *testing.T) {
		c, err := dialByAddress(t, e, shared, shared.Address, goamqp.SASLTypePlain("dev-twice@sas.route-a", "unused"))
		if err != nil {
			t.Fatal(err)
		}
		code, desc := c.putDeviceToken(bHost, "dev-twice")
		if code != 401 || !strings.Contains(desc, "but this connection is hub "+aHost+"'s") {
			t.Errorf("put-token for hub b on a connection whose SASL user named hub a: %d %s", code, desc)
		}
	})
	t.Run("hostname and SASL user disagree: refused", func(t *testing.T) {
		_, err := dialByAddress(t, e, shared, aHost, goamqp.SASLTypePlain("dev-twice@sas.route-b", "unused"))
		if err == nil || !strings.Contains(err.Error(), "amqp:unauthorized-access") || !strings.Contains(err.Error(), "names two built-in hubs") {
			t.Errorf("connection naming two hubs: %v", err)
		}
	})
	t.Run("SASL user names no hub: refused", func(t *testing.T) {
		_, err := dialByAddress(t, e, shared, shared.Address, goamqp.SASLTypePlain("dev-twice@sas.route-x", "unused"))
		if err == nil || !strings.Contains(err.Error(), "amqp:not-found") || !strings.Contains(err.Error(), `names hub "route-x"`) {
			t.Errorf("connection naming no hub: %v", err)
		}
	})
}
