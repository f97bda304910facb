package builtinhub_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestC2DOverMQTT(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-mqtt", "127.0.10.40")
	createDevice(t, h, "dev1")
	host := h.Config().HostName

	// Queued while the device is away, delivered when it subscribes.
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{MessageID: "early", Body: []byte("first"), Properties: map[string]string{"k": "v w"}}); err != nil {
		t.Fatal(err)
	}
	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	m := dc.next(t, "devices/dev1/messages/devicebound/")
	bag, _ := url.ParseQuery(strings.TrimPrefix(m.Topic(), "devices/dev1/messages/devicebound/"))
	if string(m.Payload()) != "first" || bag.Get("$.mid") != "early" || bag.Get("k") != "v w" || bag.Get("$.to") != "/devices/dev1/messages/deviceBound" {
		t.Fatalf("C2D message %s %q", m.Topic(), m.Payload())
	}
	// Sent while connected: delivered at once.
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{Body: []byte("second")}); err != nil {
		t.Fatal(err)
	}
	if m := dc.next(t, "devices/dev1/messages/devicebound/"); string(m.Payload()) != "second" {
		t.Fatalf("second C2D message %q", m.Payload())
	}
}

func TestC2DBounds(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-bounds", "127.0.10.41")
	createDevice(t, h, "dev1")
	ctx := context.Background()
	for i := range builtinhub.MaxC2DQueue {
		if err := h.SendC2D(ctx, "dev1", &builtinhub.C2DMessage{Body: []byte("x")}); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	err := h.SendC2D(ctx, "dev1", &builtinhub.C2DMessage{Body: []byte("x")})
	if !hubErrorIs(err, http.StatusForbidden, "DeviceMaximumQueueDepthExceeded") {
		t.Errorf("message over the queue depth: %v", err)
	}
	err = h.SendC2D(ctx, "dev2", &builtinhub.C2DMessage{Body: []byte("x")})
	if !hubErrorIs(err, http.StatusNotFound, "") {
		t.Errorf("message to a device that does not exist: %v", err)
	}
	err = h.SendC2D(ctx, "dev1", &builtinhub.C2DMessage{Body: make([]byte, builtinhub.MaxC2DBody+1)})
	if !hubErrorIs(err, http.StatusRequestEntityTooLarge, "") {
		t.Errorf("message over the size limit: %v", err)
	}
}

func hubErrorIs(err error, status int, code string) bool {
	var he *azurehub.Error
	return errors.As(err, &he) && he.StatusCode == status && (code == "" || he.Code == code)
}

// TestC2DSurvivesRestart: waiting messages are kept in the store; a
// device that comes back after a restart gets them, once.
func TestC2DSurvivesRestart(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-restart", "127.0.10.43")
	createDevice(t, h, "dev1")
	for _, body := range []string{"one", "two"} {
		if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{MessageID: body, Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	e.restart()
	h = e.hub("c2d-restart")
	host := h.Config().HostName
	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	for _, want := range []string{"one", "two"} {
		if m := dc.next(t, "devices/dev1/messages/devicebound/"); string(m.Payload()) != want {
			t.Fatalf("after a restart got %q, want %q", m.Payload(), want)
		}
	}
	// Acknowledged (PUBACK): nothing is left for the next start.
	waitC2DStored(t, e, "c2d-restart", 0)
	dc.Disconnect(100)
	e.restart()
	h = e.hub("c2d-restart")
	dc, _, err = dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	select {
	case m := <-dc.msgs:
		t.Fatalf("a delivered message came again after a restart: %s %q", m.Topic(), m.Payload())
	case <-time.After(300 * time.Millisecond):
	}
	// Deleting the device drops its stored queue.
	dc.Disconnect(100)
	for range 50 { // until the hub has seen the disconnection
		if d, _ := h.GetDevice(context.Background(), "dev1"); d != nil && d.ConnectionState == azurehub.Disconnected {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{Body: []byte("three")}); err != nil {
		t.Fatal(err)
	}
	if recs, _, _ := e.st.List(context.Background(), builtinhub.KindC2D, store.ListOptions{Ref: "c2d-restart"}); len(recs) != 1 {
		t.Fatalf("stored queues %d, want the waiting message's", len(recs))
	}
	if err := h.DeleteDevice(context.Background(), "dev1", ""); err != nil {
		t.Fatal(err)
	}
	if recs, _, _ := e.st.List(context.Background(), builtinhub.KindC2D, store.ListOptions{Ref: "c2d-restart"}); len(recs) != 0 {
		t.Errorf("a deleted device's queue is still stored: %d records", len(recs))
	}
}

// waitC2DStored waits until hub has n stored cloud-to-device queues.
func waitC2DStored(t *testing.T, e *env, hub string, n int) {
	t.Helper()
	var recs []store.Record
	for range 250 {
		recs, _, _ = e.st.List(context.Background(), builtinhub.KindC2D, store.ListOptions{Ref: hub})
		if len(recs) == n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("stored cloud-to-device queues of %s: %d, want %d", hub, len(recs), n)
}

// TestC2DOverMQTTSettledByPUBACK: a message sent at QoS 1 stays queued
// until the device's PUBACK, which the device's own QoS 1 publishes
// (numbered from 1, as the hub's are) do not stand in for; a connection
// that ends without it abandons the message, which the next connection
// gets again.
func TestC2DOverMQTTSettledByPUBACK(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-puback", "127.0.17.40")
	createDevice(t, h, "dev1")
	host := h.Config().HostName
	o := dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true, manualAck: true}
	dc, _, err := dialDevice(t, e, "dev1", o)
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{MessageID: "m1", Body: []byte("one")}); err != nil {
		t.Fatal(err)
	}
	m := dc.next(t, "devices/dev1/messages/devicebound/")
	if m.Qos() != 1 || string(m.Payload()) != "one" {
		t.Fatalf("got %q at QoS %d", m.Payload(), m.Qos())
	}
	for range 3 {
		dc.publish(t, "devices/dev1/messages/events/", 1, "telemetry")
	}
	waitC2DStored(t, e, "c2d-puback", 1)
	dc.Disconnect(100)

	// Not acknowledged: delivered again to the next connection.
	dc, _, err = dialDevice(t, e, "dev1", o)
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	m = dc.next(t, "devices/dev1/messages/devicebound/")
	if string(m.Payload()) != "one" {
		t.Fatalf("again: %q", m.Payload())
	}
	waitC2DStored(t, e, "c2d-puback", 1)
	m.Ack()
	waitC2DStored(t, e, "c2d-puback", 0)
}

// TestC2DPacketIDsApart: the device's own QoS 1 publishes may reuse the
// packet id of a cloud-to-device message in flight (the id spaces of the
// two directions are separate in MQTT); they do not complete the message,
// only the device's PUBACK does.
func TestC2DPacketIDsApart(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("c2d-pid", "127.0.17.41")
	createDevice(t, h, "dev1")
	host := h.Config().HostName
	c, err := tls.Dial("tcp", mqttAddr(h), e.tlsConfig(host))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	tok, _ := sas.New(url.QueryEscape(host+"/devices/dev1"), "", testKey1, time.Now().Add(time.Hour))
	write := func(pk packets.Packet) {
		t.Helper()
		pk.ProtocolVersion = 4
		var buf bytes.Buffer
		var err error
		switch pk.FixedHeader.Type {
		case packets.Connect:
			err = pk.ConnectEncode(&buf)
		case packets.Subscribe:
			err = pk.SubscribeEncode(&buf)
		case packets.Publish:
			err = pk.PublishEncode(&buf)
		case packets.Puback:
			err = pk.PubackEncode(&buf)
		}
		if err == nil {
			_, err = c.Write(buf.Bytes())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// read returns the next packet's type and body.
	r := bufio.NewReader(c)
	read := func() (byte, []byte) {
		t.Helper()
		first, err := r.ReadByte()
		if err != nil {
			t.Fatal(err)
		}
		size, mult := 0, 1
		for {
			b, err := r.ReadByte()
			if err != nil {
				t.Fatal(err)
			}
			size += int(b&0x7f) * mult
			if b&0x80 == 0 {
				break
			}
			mult *= 128
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatal(err)
		}
		return first >> 4, body
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), ClientIdentifier: "dev1", Clean: true, Keepalive: 60,
		UsernameFlag: true, Username: []byte(host + "/dev1/?api-version=2021-04-12"), PasswordFlag: true, Password: []byte(tok),
	}})
	if typ, body := read(); typ != packets.Connack || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK: type %d % x", typ, body)
	}
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 9,
		Filters: packets.Subscriptions{{Filter: "devices/dev1/messages/devicebound/#", Qos: 1}}})
	if typ, _ := read(); typ != packets.Suback {
		t.Fatalf("SUBACK: type %d", typ)
	}
	if err := h.SendC2D(context.Background(), "dev1", &builtinhub.C2DMessage{Body: []byte("c2d")}); err != nil {
		t.Fatal(err)
	}
	typ, body := read()
	if typ != packets.Publish {
		t.Fatalf("want the message, got packet type %d", typ)
	}
	tl := int(binary.BigEndian.Uint16(body))
	pid := binary.BigEndian.Uint16(body[2+tl:])
	// Telemetry at QoS 1 with the message's packet id.
	write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: pid,
		TopicName: "devices/dev1/messages/events/", Payload: []byte("t")})
	if typ, body := read(); typ != packets.Puback || binary.BigEndian.Uint16(body) != pid {
		t.Fatalf("telemetry PUBACK: type %d % x", typ, body)
	}
	// The connection ends without the message's PUBACK: the next one
	// gets it again, and its PUBACK completes it.
	c.Close()
	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: mqttAddr(h), tlsName: host, clean: true})
	if err != nil {
		t.Fatal(err)
	}
	dc.subscribe(t, "devices/dev1/messages/devicebound/#", 1)
	if m := dc.next(t, "devices/dev1/messages/devicebound/"); string(m.Payload()) != "c2d" {
		t.Fatalf("again: %q", m.Payload())
	}
	waitC2DStored(t, e, "c2d-pid", 0)
}
