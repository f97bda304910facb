package mqtt

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

// closedWithin reads from c until the server closes it and fails the test
// unless that happens within bound.
func closedWithin(t *testing.T, c net.Conn, bound time.Duration) {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v", ioTimeout)
		}
		if d := time.Since(start); d > bound {
			t.Fatalf("connection closed after %v, want within %v", d, bound)
		}
		return
	}
}

// TestConnectionPhasesBounded checks that no phase of a connection waits
// for the client forever: the TLS handshake and the CONNECT, the silence
// of a keep-alive 0 session, and what remains of a connection once its
// credentials were refused.
func TestConnectionPhasesBounded(t *testing.T) {
	unauthorized := &fakeProvisioner{register: func(context.Context, provision.Request) (provision.Result, error) {
		return provision.Result{}, dps.Errorf(dps.CodeUnauthorizedDevice, "Unauthorized.")
	}}
	ts := startServer(t, unauthorized, Options{
		ConnectTimeout:    300 * time.Millisecond,
		MaxIdle:           500 * time.Millisecond,
		UnauthorizedGrace: 300 * time.Millisecond,
	})

	t.Run("no TLS handshake", func(t *testing.T) {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		closedWithin(t, c, 3*time.Second)
	})
	t.Run("no CONNECT", func(t *testing.T) {
		closedWithin(t, ts.dialTLS(t, nil), 3*time.Second)
	})
	t.Run("keep-alive 0 idle", func(t *testing.T) {
		rc := newRawClient(t, ts.dialTLS(t, nil))
		ack := rc.connect(connectOpts{clientID: "dev-i", username: testUsername("dev-i"), password: testSAS, clean: true, keepalive: 0})
		if ack.ReasonCode != 0 {
			t.Fatalf("CONNACK code %#x", ack.ReasonCode)
		}
		closedWithin(t, rc.c, 3*time.Second)
	})
	t.Run("keep-alive 0 wrong key", func(t *testing.T) {
		// An idle bound far away, so only the refusal can close it.
		ts := startServer(t, unauthorized, Options{MaxIdle: time.Hour, UnauthorizedGrace: 300 * time.Millisecond})
		rc := newRawClient(t, ts.dialTLS(t, nil))
		ack := rc.connect(connectOpts{clientID: "dev-w", username: testUsername("dev-w"), password: "SharedAccessSignature sr=x&sig=wrong&se=1", clean: true, keepalive: 0})
		if ack.ReasonCode != 0 {
			t.Fatalf("CONNACK code %#x", ack.ReasonCode)
		}
		rc.subscribe(7, packets.Subscription{Filter: ResponseFilter, Qos: 1})
		res := rc.request(1, registerTopic("1"), "")
		if want := "$dps/registrations/res/401/?$rid=1"; res.TopicName != want {
			t.Fatalf("topic %q, want %q", res.TopicName, want)
		}
		if _, err := rc.recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after 401: %v, want EOF", err)
		}
	})
	t.Run("throttled before any success", func(t *testing.T) {
		// A wrong-key storm meets the throttle before the key is checked:
		// a 429 to a connection that never had an answer is a refusal too.
		throttled := &fakeProvisioner{register: func(context.Context, provision.Request) (provision.Result, error) {
			e := dps.Errorf(dps.CodeThrottled, "Too many requests.")
			e.RetryAfter = time.Second
			return provision.Result{}, e
		}}
		ts := startServer(t, throttled, Options{MaxIdle: time.Hour, UnauthorizedGrace: 300 * time.Millisecond})
		rc := newRawClient(t, ts.dialTLS(t, nil))
		rc.connect(connectOpts{clientID: "dev-t", username: testUsername("dev-t"), password: testSAS, clean: true, keepalive: 0})
		rc.subscribe(7, packets.Subscription{Filter: ResponseFilter, Qos: 1})
		res := rc.request(1, registerTopic("1"), "")
		if !strings.HasPrefix(res.TopicName, "$dps/registrations/res/429/") {
			t.Fatalf("topic %q, want a 429", res.TopicName)
		}
		if _, err := rc.recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after a 429 with nothing answered before: %v, want EOF", err)
		}
	})
}

// TestMQTT311Answers checks that a 3.1.1 client is answered in 3.1.1: a
// CONNACK return code of 1 to 5, never an MQTT 5 reason code, and the
// connection closed without a DISCONNECT packet.
func TestMQTT311Answers(t *testing.T) {
	ts := startServer(t, &fakeProvisioner{}, Options{})

	t.Run("retained will refused", func(t *testing.T) {
		rc := newRawClient(t, ts.dialTLS(t, nil))
		rc.send(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), ClientIdentifier: "dev-r", Clean: true, Keepalive: 60,
				UsernameFlag: true, Username: []byte(testUsername("dev-r")), PasswordFlag: true, Password: []byte(testSAS),
				WillFlag: true, WillRetain: true, WillTopic: "w", WillPayload: []byte("x"),
			},
		})
		ack := rc.mustRecv(packets.Connack)
		if ack.ReasonCode == 0 || ack.ReasonCode > 5 {
			t.Fatalf("CONNACK return code %d, want a 3.1.1 refusal (1-5)", ack.ReasonCode)
		}
		if pk, err := rc.recv(); err == nil {
			t.Fatalf("got %s after the refusal, want the connection closed", packets.PacketNames[pk.FixedHeader.Type])
		}
	})
	t.Run("no DISCONNECT", func(t *testing.T) {
		rc := newRawClient(t, ts.dialTLS(t, nil))
		rc.connectDevice("dev-d")
		rc.publish(1, 1, "$dps/registrations/res/200/?$rid=1", `{}`) // not a request topic
		for {
			pk, err := rc.recv()
			if err != nil {
				break
			}
			if pk.FixedHeader.Type == packets.Disconnect {
				t.Fatal("a 3.1.1 client got a DISCONNECT packet")
			}
		}
	})
}

// TestDeepPayloadRefused checks the nesting limit on MQTT register bodies.
func TestDeepPayloadRefused(t *testing.T) {
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	rc := newRawClient(t, ts.dialTLS(t, nil))
	rc.connectDevice("dev-deep")
	deep := `{"payload":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`
	res := rc.request(1, registerTopic("1"), deep)
	if want := "$dps/registrations/res/400/?$rid=1"; res.TopicName != want {
		t.Fatalf("topic %q, want %q", res.TopicName, want)
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if len(fp.requests) != 0 {
		t.Fatal("the engine was asked")
	}
}
