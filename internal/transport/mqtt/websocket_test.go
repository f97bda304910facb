package mqtt

import (
	"github.com/dpsd/dpsd/internal/transport/wsconn"

	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/dpsd/dpsd/api/dps"
)

// wsServer is a Server whose WebSocket handler sits on an HTTPS test
// server, mounted the way dpsd mounts it: upgrades go to MQTT, the rest to
// the REST API (here a 404).
type wsServer struct {
	*Server
	url   string // https://127.0.0.1:port
	roots *x509.CertPool
}

func startWSServer(t *testing.T, p Provisioner) *wsServer {
	t.Helper()
	cert := newCert(t, "localhost")
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	s, err := New(p, Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ws := s.WebSocketHandler()
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsWebSocketUpgrade(r) {
			ws.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	}))
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}
	hs.StartTLS()
	// Cleanups run last-registered first: the MQTT server closes the
	// hijacked WebSocket connections, which lets the HTTP server's Close
	// (it waits for running handlers) return.
	t.Cleanup(hs.Close)
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &wsServer{Server: s, url: hs.URL, roots: roots}
}

func (ws *wsServer) dial(t *testing.T, path string, protocols []string, clientCert *tls.Certificate) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: ws.roots}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	d := websocket.Dialer{TLSClientConfig: cfg, Subprotocols: protocols, HandshakeTimeout: ioTimeout}
	c, resp, err := d.Dial("wss"+strings.TrimPrefix(ws.url, "https")+path, nil)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, resp, err
}

func TestWebSocket(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		protocol string
	}{
		{"Node, Python", "/$iothub/websocket", "mqtt"},
		{"C#", "/", "mqtt"},
		{"C SDK", "/$iothub/websocket", "MQTT"},
	}
	fp := &fakeProvisioner{}
	ws := startWSServer(t, fp)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devCert := newCert(t, "dev-ws")
			c, resp, err := ws.dial(t, tt.path, []string{tt.protocol}, &devCert)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != tt.protocol {
				t.Fatalf("negotiated subprotocol %q, want %q", got, tt.protocol)
			}
			rc := newRawClient(t, wsconn.NewConn(c))
			rc.connectDevice("dev-ws")
			op := decodeOp(t, rc.request(1, registerTopic("w1"), ""))
			res := rc.request(2, statusTopic("w2", op.OperationID), " ")
			res = rc.request(3, statusTopic("w3", op.OperationID), " ")
			if res.TopicName != "$dps/registrations/res/200/?$rid=w3" {
				t.Fatalf("final topic %q", res.TopicName)
			}
			req := fp.lastRequest(t)
			if req.Transport != TransportMQTTWebSocket || len(req.PeerCertificates) != 1 || req.SASToken != testSAS {
				t.Fatalf("engine request transport=%q certs=%d sas=%q", req.Transport, len(req.PeerCertificates), req.SASToken)
			}
		})
	}
}

func TestWebSocketRefusals(t *testing.T) {
	ws := startWSServer(t, &fakeProvisioner{})
	tests := []struct {
		name      string
		protocols []string
	}{
		{"no subprotocol", nil},
		{"other subprotocol", []string{"AMQPWSB10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, resp, err := ws.dial(t, "/$iothub/websocket", tt.protocols, nil)
			if err == nil {
				t.Fatal("upgrade succeeded")
			}
			if resp == nil || resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("response %v, want 400", resp)
			}
		})
	}
}

// TestPaho runs the whole flow with a real MQTT client library, over TLS
// and over WebSockets.
func TestPaho(t *testing.T) {
	fp := &fakeProvisioner{}
	ts := startServer(t, fp, Options{})
	ws := startWSServer(t, fp)
	tests := []struct {
		name   string
		broker string
		roots  *x509.CertPool
	}{
		{"tls", "tls://" + ts.addr, ts.roots},
		{"wss", "wss" + strings.TrimPrefix(ws.url, "https") + "/$iothub/websocket", ws.roots},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			regID := "paho-" + tt.name // per subtest: the fake counts polls per operation
			opts := paho.NewClientOptions().
				AddBroker(tt.broker).
				SetClientID(regID).
				SetUsername(testUsername(regID)).
				SetPassword(testSAS).
				SetTLSConfig(&tls.Config{RootCAs: tt.roots}).
				SetProtocolVersion(4).
				SetCleanSession(true).
				SetAutoReconnect(false).
				SetConnectTimeout(ioTimeout)
			client := paho.NewClient(opts)
			if tok := client.Connect(); !tok.WaitTimeout(ioTimeout) || tok.Error() != nil {
				t.Fatalf("connect: %v", tok.Error())
			}
			defer client.Disconnect(0)

			responses := make(chan paho.Message, 4)
			if tok := client.Subscribe(ResponseFilter, 1, func(_ paho.Client, m paho.Message) { responses <- m }); !tok.WaitTimeout(ioTimeout) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			ask := func(topic, payload string) paho.Message {
				t.Helper()
				if tok := client.Publish(topic, 1, false, payload); !tok.WaitTimeout(ioTimeout) || tok.Error() != nil {
					t.Fatalf("publish: %v", tok.Error())
				}
				select {
				case m := <-responses:
					return m
				case <-t.Context().Done():
					t.Fatal("no response")
				}
				return nil
			}

			m := ask(registerTopic("p1"), `{"registrationId":"`+regID+`"}`)
			if m.Topic() != "$dps/registrations/res/202/?$rid=p1&retry-after=3" || m.Qos() != 1 {
				t.Fatalf("register answer on %q QoS %d", m.Topic(), m.Qos())
			}
			var op dps.RegistrationOperationStatus
			if err := json.Unmarshal(m.Payload(), &op); err != nil {
				t.Fatal(err)
			}
			for i, want := range []string{
				"$dps/registrations/res/202/?$rid=p2&retry-after=2",
				"$dps/registrations/res/200/?$rid=p3",
			} {
				rid := []string{"p2", "p3"}[i]
				if m := ask(statusTopic(rid, op.OperationID), " "); m.Topic() != want {
					t.Fatalf("poll answer on %q, want %q", m.Topic(), want)
				}
			}
		})
	}
}
