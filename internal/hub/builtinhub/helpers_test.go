package builtinhub_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// env is a store, a CA and a manager with hubs on their own loopback
// addresses (ephemeral ports, so tests never need the standard ones).
type env struct {
	t    *testing.T
	dir  string
	st   store.Store
	ca   *localca.CA
	m    *builtinhub.Manager
	opts builtinhub.Options
}

func newEnv(t *testing.T, mod func(*builtinhub.Options)) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := localca.LoadOrCreate(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, st: st, ca: ca}
	e.opts = builtinhub.Options{
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Certificate: ca.ServerCertificate,
		HTTPSPort:   "0",
		MQTTPort:    "0",
		AMQPPort:    "0",
	}
	if mod != nil {
		mod(&e.opts)
	}
	e.start()
	return e
}

func (e *env) start() {
	e.t.Helper()
	m, err := builtinhub.NewManager(e.st, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.m = m
	e.t.Cleanup(func() { e.stop() })
}

func (e *env) stop() {
	if e.m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.m.Close(ctx); err != nil {
		e.t.Logf("closing manager: %v", err)
	}
	e.m = nil
}

// restart stops every hub and starts them again from the store.
func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

func (e *env) createHub(name, addr string) *builtinhub.Hub {
	e.t.Helper()
	if _, err := e.m.Create(context.Background(), name, builtinhub.CreateOptions{Address: addr}); err != nil {
		e.t.Fatalf("create hub %s: %v", name, err)
	}
	return e.hub(name)
}

func (e *env) hub(name string) *builtinhub.Hub {
	e.t.Helper()
	h, ok := e.m.Hub(name)
	if !ok {
		e.t.Fatalf("hub %s not running", name)
	}
	return h
}

func (e *env) tlsConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: e.ca.Pool(), ServerName: serverName, MinVersion: tls.VersionTLS12}
}

var testKey1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
var testKey2 = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="

func createDevice(t *testing.T, h *builtinhub.Hub, id string) {
	t.Helper()
	_, err := h.CreateDevice(context.Background(), &azurehub.Device{
		DeviceID:       id,
		Authentication: &azurehub.Authentication{Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: testKey1, SecondaryKey: testKey2}},
	})
	if err != nil {
		t.Fatalf("create device %s: %v", id, err)
	}
}

// deviceClient is a paho MQTT client acting as an IoT hub device.
type deviceClient struct {
	paho.Client
	msgs chan paho.Message
}

type dialOpts struct {
	host      string // host name in user name and token
	key       string
	clean     bool
	scheme    string // "ssl" or "wss"
	addr      string
	tlsName   string
	username  string // overrides the computed user name
	keepAlive int64  // seconds; 0 means paho's default, -1 none
	manualAck bool   // PUBACK only when the test calls Ack
}

func dialDevice(t *testing.T, e *env, id string, o dialOpts) (*deviceClient, bool, error) {
	t.Helper()
	if o.key == "" {
		o.key = testKey1
	}
	if o.scheme == "" {
		o.scheme = "ssl"
	}
	tok, err := sas.New(url.QueryEscape(o.host+"/devices/"+id), "", o.key, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	user := o.host + "/" + id + "/?api-version=2021-04-12&DeviceClientType=dpsd-test"
	if o.username != "" {
		user = o.username
	}
	dc := &deviceClient{msgs: make(chan paho.Message, 64)}
	opts := paho.NewClientOptions().
		AddBroker(o.scheme + "://" + o.addr).
		SetClientID(id).
		SetUsername(user).
		SetPassword(tok).
		SetCleanSession(o.clean).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).
		SetTLSConfig(e.tlsConfig(o.tlsName)).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { dc.msgs <- m }).
		SetAutoAckDisabled(o.manualAck)
	switch {
	case o.keepAlive < 0:
		opts.SetKeepAlive(0)
	case o.keepAlive > 0:
		opts.SetKeepAlive(time.Duration(o.keepAlive) * time.Second)
	}
	if o.scheme == "wss" {
		opts.Servers[0].Path = "/$iothub/websocket"
	}
	dc.Client = paho.NewClient(opts)
	ct := dc.Connect()
	if !ct.WaitTimeout(15 * time.Second) {
		t.Fatal("connect timed out")
	}
	if err := ct.Error(); err != nil {
		return nil, false, err
	}
	t.Cleanup(func() { dc.Disconnect(100) })
	return dc, ct.(*paho.ConnectToken).SessionPresent(), nil
}

func (dc *deviceClient) subscribe(t *testing.T, filter string, qos byte) {
	t.Helper()
	tok := dc.Subscribe(filter, qos, func(_ paho.Client, m paho.Message) { dc.msgs <- m })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func (dc *deviceClient) publish(t *testing.T, topic string, qos byte, payload string) {
	t.Helper()
	tok := dc.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// next waits for the next message on a topic with the given prefix,
// skipping others.
func (dc *deviceClient) next(t *testing.T, prefix string) paho.Message {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case m := <-dc.msgs:
			if len(m.Topic()) >= len(prefix) && m.Topic()[:len(prefix)] == prefix {
				return m
			}
		case <-deadline:
			t.Fatalf("no message on %s", prefix)
		}
	}
}

func mqttAddr(h *builtinhub.Hub) string  { return h.MQTTAddr() }
func httpsAddr(h *builtinhub.Hub) string { return h.HTTPSAddr() }
