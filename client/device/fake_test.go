package device

import (
	"github.com/dpsd/dpsd/internal/transport/wsconn"

	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/gorilla/websocket"
	mqttserver "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/internal/sas"
)

// step is one scripted answer of the fake service.
type step struct {
	status     int
	retryAfter string // "" sends none
	body       string
}

// fakeDPS answers register and poll requests with a script, over HTTPS,
// MQTT and MQTT over WebSockets, and checks what the client sends.
type fakeDPS struct {
	t        *testing.T
	scope    string
	regID    string
	groupKey string // devices' keys are derived from it

	mu       sync.Mutex
	script   []step
	requests []string // "PUT register", "GET poll <opid>", "MQTT register", …
	payloads []string
	problems []string // protocol violations seen
	conns    int      // TLS connections accepted by the HTTPS server
	refuse   bool     // refuse MQTT CONNECTs, as DPS does for a bad certificate

	https    *httptest.Server
	mqttAddr string
	roots    *x509.CertPool
}

const (
	testScope    = "0ne00ABC123"
	testRegID    = "my-device-01"
	testGroupKey = "c2VjcmV0LWdyb3VwLWtleS1mb3ItZmFrZS1kcHMtdGVzdHMhIQ=="
)

func newFakeDPS(t *testing.T) *fakeDPS {
	t.Helper()
	f := &fakeDPS{t: t, scope: testScope, regID: testRegID, groupKey: testGroupKey}

	mux := http.NewServeMux()
	mux.HandleFunc("/", f.serveHTTP)
	f.https = httptest.NewUnstartedServer(mux)
	f.https.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.mu.Lock()
			f.conns++
			f.mu.Unlock()
		}
	}
	f.https.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.https.StartTLS()
	t.Cleanup(f.https.Close)
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.https.Certificate())

	// MQTT broker on its own TLS listener with the same certificate.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: f.https.TLS.Certificates})
	if err != nil {
		t.Fatal(err)
	}
	f.mqttAddr = ln.Addr().String()
	broker := mqttserver.New(&mqttserver.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := broker.AddHook(&dpsHook{f: f}, nil); err != nil {
		t.Fatal(err)
	}
	if err := broker.AddListener(listeners.NewNet("tls", ln)); err != nil {
		t.Fatal(err)
	}
	if err := broker.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Close() })

	// MQTT over WebSockets: upgrade on the HTTPS server, hand the stream to
	// the same broker.
	up := websocket.Upgrader{Subprotocols: []string{"mqtt"}}
	mux.HandleFunc(websocketPath, func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			http.Error(w, "not a websocket upgrade", http.StatusBadRequest)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			f.problem("websocket upgrade: %v", err)
			return
		}
		if ws.Subprotocol() != "mqtt" {
			f.problem("websocket subprotocol %q", ws.Subprotocol())
		}
		_ = broker.EstablishConnection("ws", wsconn.NewConn(ws))
	})
	return f
}

func (f *fakeDPS) setScript(s ...step) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = s
	f.requests, f.payloads, f.problems = nil, nil, nil
}

func (f *fakeDPS) problem(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.problems = append(f.problems, fmt.Sprintf(format, args...))
}

// next records a request and returns the next scripted answer.
func (f *fakeDPS) next(req, payload string) step {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	f.payloads = append(f.payloads, payload)
	if len(f.script) == 0 {
		return step{status: 500, body: `{"errorCode":500000,"message":"script exhausted"}`}
	}
	s := f.script[0]
	f.script = f.script[1:]
	return s
}

// checkToken verifies a SAS token the way the server must: HMAC over sr as
// sent, with the key derived from the group key.
func (f *fakeDPS) checkToken(tok string) {
	t, err := sas.Parse(tok)
	if err != nil {
		f.problem("token: %v", err)
		return
	}
	sr, err := t.DecodedResource()
	if want := f.scope + "/registrations/" + f.regID; err != nil || sr != want {
		f.problem("token sr = %q, want %q", sr, want)
	}
	if t.KeyName != "registration" {
		f.problem("token skn = %q", t.KeyName)
	}
	key, _ := base64.StdEncoding.DecodeString(f.groupKey)
	if !t.Verify(sas.DeriveKeyBytes(key, f.regID)) {
		f.problem("token signature does not verify")
	}
}

func (f *fakeDPS) serveHTTP(w http.ResponseWriter, r *http.Request) {
	base := "/" + f.scope + "/registrations/" + f.regID
	body, _ := io.ReadAll(r.Body)
	if r.URL.Query().Get("api-version") != DefaultAPIVersion {
		f.problem("api-version %q", r.URL.Query().Get("api-version"))
	}
	f.checkToken(r.Header.Get("Authorization"))
	var req string
	switch {
	case r.Method == http.MethodPut && r.URL.Path == base+"/register":
		req = "PUT register"
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			f.problem("register Content-Type %q", ct)
		}
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, base+"/operations/"):
		req = "GET poll " + strings.TrimPrefix(r.URL.Path, base+"/operations/")
	default:
		f.problem("unexpected %s %s", r.Method, r.URL.Path)
		http.NotFound(w, r)
		return
	}
	s := f.next(req, string(body))
	if s.retryAfter != "" {
		w.Header().Set("Retry-After", s.retryAfter)
	}
	if strings.HasPrefix(s.body, "{") {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
	}
	w.WriteHeader(s.status)
	io.WriteString(w, s.body)
}

// dpsHook makes the mochi broker behave like the DPS MQTT endpoint.
type dpsHook struct {
	mqttserver.HookBase
	f *fakeDPS
}

func (h *dpsHook) ID() string { return "fake-dps" }

func (h *dpsHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqttserver.OnConnectAuthenticate, mqttserver.OnACLCheck, mqttserver.OnPublish}, []byte{b})
}

func (h *dpsHook) OnConnectAuthenticate(cl *mqttserver.Client, pk packets.Packet) bool {
	f := h.f
	wantUser := f.scope + "/registrations/" + f.regID + "/api-version=" + DefaultAPIVersion + "&ClientVersion="
	if u := string(pk.Connect.Username); !strings.HasPrefix(u, wantUser) {
		f.problem("MQTT username %q, want prefix %q", u, wantUser)
	}
	if string(pk.Connect.ClientIdentifier) != f.regID {
		f.problem("MQTT client id %q", pk.Connect.ClientIdentifier)
	}
	f.checkToken(string(pk.Connect.Password))
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.refuse
}

func (h *dpsHook) OnACLCheck(*mqttserver.Client, string, bool) bool { return true }

func (h *dpsHook) OnPublish(cl *mqttserver.Client, pk packets.Packet) (packets.Packet, error) {
	f := h.f
	var req, rid string
	switch {
	case strings.HasPrefix(pk.TopicName, topicRegister):
		rid = strings.TrimPrefix(pk.TopicName, topicRegister)
		req = "MQTT register"
	case strings.HasPrefix(pk.TopicName, topicPoll):
		q, err := url.ParseQuery(strings.TrimPrefix(pk.TopicName, "$dps/registrations/GET/iotdps-get-operationstatus/?"))
		if err != nil {
			f.problem("poll topic %q: %v", pk.TopicName, err)
		}
		rid = q.Get("$rid")
		req = "GET poll " + q.Get("operationId")
	default:
		f.problem("unexpected publish %q", pk.TopicName)
		return pk, nil
	}
	if pk.FixedHeader.Qos != 1 {
		f.problem("publish at QoS %d", pk.FixedHeader.Qos)
	}
	s := f.next(req, string(pk.Payload))
	topic := fmt.Sprintf("%s%d/?$rid=%s", topicResponsePrefix, s.status, rid)
	if s.retryAfter != "" {
		topic += "&retry-after=" + s.retryAfter
	}
	resp := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: []byte(s.body)}
	if err := cl.WritePacket(resp); err != nil {
		f.problem("write response: %v", err)
	}
	return pk, nil
}
