package builtinhub_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/internal/connlimit"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
)

// TestConnectionPhasesBounded checks that a device connection that never
// sends CONNECT, over TLS or over WebSockets, and a REST body that
// trickles in are ended by the hub.
func TestConnectionPhasesBounded(t *testing.T) {
	const bound = 300 * time.Millisecond
	e := newEnv(t, func(o *builtinhub.Options) {
		o.ConnectTimeout = bound
		o.BodyTimeout = bound
	})
	h := e.createHub("phases-hub", "127.0.9.3")
	cfg := e.tlsConfig("127.0.9.3")

	// ended fails the test unless the server ends what read waits for
	// within a few seconds.
	ended := func(t *testing.T, read func() error) {
		t.Helper()
		start := time.Now()
		err := read()
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("still open after 10 s (%v)", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("ended after %v, want about %v", d, bound)
		}
	}

	t.Run("MQTT over WebSockets without CONNECT", func(t *testing.T) {
		d := websocket.Dialer{TLSClientConfig: cfg, Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
		ws, _, err := d.Dial("wss://"+h.HTTPSAddr()+"/$iothub/websocket", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		ended(t, func() error { _, _, err := ws.ReadMessage(); return err })
	})
	t.Run("MQTT over TLS without CONNECT", func(t *testing.T) {
		c, err := tls.Dial("tcp", h.MQTTAddr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		ended(t, func() error { _, err := io.ReadAll(c); return errors.Join(err, io.EOF) })
	})
	t.Run("REST body", func(t *testing.T) {
		c, err := tls.Dial("tcp", h.HTTPSAddr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "PUT /devices/d1?api-version=2021-04-12 HTTP/1.1\r\nHost: 127.0.9.3\r\nContent-Length: 100\r\n\r\n{")
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		ended(t, func() error { _, err := io.ReadAll(c); return errors.Join(err, io.EOF) })
	})
}

// TestListenerOption checks that the hubs' listeners go through
// Options.Listener, which the node uses for its connection caps.
func TestListenerOption(t *testing.T) {
	lim := connlimit.New(-1, 1, nil)
	e := newEnv(t, func(o *builtinhub.Options) { o.Listener = lim.Listener })
	h := e.createHub("capped-hub", "127.0.9.8")
	open := func() bool {
		c, err := tls.Dial("tcp", h.MQTTAddr(), e.tlsConfig("127.0.9.8"))
		if err != nil {
			return false
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}
	if !open() {
		t.Fatal("first connection refused")
	}
	if open() {
		t.Fatal("second connection kept with a cap of 1 per source")
	}
}

// TestColonDeviceID checks that a device id with ':' (valid in IoT Hub,
// and a DPS registration id may hold one) can be created and connect.
func TestColonDeviceID(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("colon-hub", "127.0.9.9")
	createDevice(t, h, "line-3:sensor:7")
	host := h.Config().HostName
	if _, _, err := dialDevice(t, e, "line-3:sensor:7", dialOpts{host: host, addr: h.MQTTAddr(), tlsName: host}); err != nil {
		t.Fatalf("connect: %v", err)
	}
}

// TestSilentDeviceClosed checks that an authenticated device that asked
// for no keep-alive, and so never pings, is closed after 1.5 times the
// hub's maximum keep-alive of silence rather than held forever.
func TestSilentDeviceClosed(t *testing.T) {
	e := newEnv(t, func(o *builtinhub.Options) { o.MaxKeepAlive = 2 * time.Second })
	h := e.createHub("silent-hub", "127.0.9.12")
	createDevice(t, h, "quiet")
	host := h.Config().HostName
	lost := make(chan time.Time, 1)
	dc, _, err := dialDevice(t, e, "quiet", dialOpts{host: host, addr: h.MQTTAddr(), tlsName: host, keepAlive: -1})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	start := time.Now()
	go func() {
		for dc.IsConnectionOpen() && time.Since(start) < 20*time.Second {
			time.Sleep(50 * time.Millisecond)
		}
		lost <- time.Now()
	}()
	if d := (<-lost).Sub(start); dc.IsConnectionOpen() || d > 15*time.Second {
		t.Fatalf("a silent device without keep-alive is still connected after %v", d)
	}
}

// TestMQTT311Connack checks that the hub refuses a 3.1.1 client with a
// 3.1.1 CONNACK return code (1 to 5), not an MQTT 5 reason code.
func TestMQTT311Connack(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("v311-hub", "127.0.9.10")
	c, err := tls.Dial("tcp", h.MQTTAddr(), e.tlsConfig("127.0.9.10"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var buf bytes.Buffer
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: "dev1", Clean: true, Keepalive: 60,
			UsernameFlag: true, Username: []byte("x/dev1/?api-version=2021-04-12"),
			WillFlag: true, WillRetain: true, WillTopic: "w", WillPayload: []byte("x"),
		},
	}
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("no CONNACK: %v", err)
	}
	if ack[0] != packets.Connack<<4 || ack[1] != 2 || ack[3] == 0 || ack[3] > 5 {
		t.Fatalf("CONNACK % x, want a 3.1.1 refusal (return code 1-5, no properties)", ack)
	}
}

// TestSessionFilterCap checks that one session holds at most
// MaxSessionFilters subscription filters: the ones over are refused in
// the SUBACK, and the session is not grown by them.
func TestSessionFilterCap(t *testing.T) {
	e := newEnv(t, nil)
	h := e.createHub("filters-hub", "127.0.9.11")
	createDevice(t, h, "dev1")
	host := h.Config().HostName
	dc, _, err := dialDevice(t, e, "dev1", dialOpts{host: host, addr: h.MQTTAddr(), tlsName: host})
	if err != nil {
		t.Fatal(err)
	}
	filters := map[string]byte{}
	for i := range builtinhub.MaxSessionFilters + 10 {
		filters[fmt.Sprintf("devices/dev1/messages/devicebound/f%d", i)] = 1
	}
	tok := dc.SubscribeMultiple(filters, nil)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("SUBACK timed out")
	}
	granted, refused := 0, 0
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		if code == 0x80 {
			refused++
		} else {
			granted++
		}
	}
	if granted != builtinhub.MaxSessionFilters || refused != 10 {
		t.Fatalf("granted %d, refused %d; want %d and 10", granted, refused, builtinhub.MaxSessionFilters)
	}
}
