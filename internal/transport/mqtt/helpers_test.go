package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

// ioTimeout bounds every blocking read in the tests so that a bug hangs a
// test for seconds, not forever. It is a safety net, not an assertion.
const ioTimeout = 10 * time.Second

const (
	testScope = "0ne00ABC123"
	testSAS   = "SharedAccessSignature sr=0ne00ABC123/registrations/dev-1&sig=abc%3D&se=1795380497"
)

func testUsername(regID string) string {
	return testScope + "/registrations/" + regID + "/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1"
}

// newCert returns a self-signed certificate for cn, valid for 127.0.0.1.
func newCert(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// fakeProvisioner answers like a small engine: register → assigning,
// first poll → assigning, second poll → assigned. Hooks override either.
type fakeProvisioner struct {
	mu       sync.Mutex
	requests []provision.Request
	opIDs    []string
	polls    map[string]int

	register func(ctx context.Context, req provision.Request) (provision.Result, error)
	status   func(ctx context.Context, req provision.Request, opID string) (provision.Result, error)
}

func (f *fakeProvisioner) Register(ctx context.Context, req provision.Request) (provision.Result, error) {
	f.mu.Lock()
	f.requests = append(f.requests, req)
	fn := f.register
	f.mu.Unlock()
	if fn != nil {
		return fn(ctx, req)
	}
	return provision.Result{
		Operation:  &dps.RegistrationOperationStatus{OperationID: "4.0123456789abcdef." + req.RegistrationID, Status: dps.StatusAssigning},
		RetryAfter: 3 * time.Second,
	}, nil
}

func (f *fakeProvisioner) OperationStatus(ctx context.Context, req provision.Request, opID string) (provision.Result, error) {
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.opIDs = append(f.opIDs, opID)
	if f.polls == nil {
		f.polls = make(map[string]int)
	}
	f.polls[opID]++
	n := f.polls[opID]
	fn := f.status
	f.mu.Unlock()
	if fn != nil {
		return fn(ctx, req, opID)
	}
	if !strings.HasSuffix(opID, "."+req.RegistrationID) {
		return provision.Result{}, dps.Errorf(dps.CodeOperationNotFound, "Operation not found.")
	}
	if n < 2 {
		return provision.Result{
			Operation: &dps.RegistrationOperationStatus{
				OperationID:       opID,
				Status:            dps.StatusAssigning,
				RegistrationState: &dps.DeviceRegistrationState{RegistrationID: req.RegistrationID, Status: dps.StatusAssigning},
			},
			RetryAfter: 1500 * time.Millisecond,
		}, nil
	}
	return provision.Result{Operation: &dps.RegistrationOperationStatus{
		OperationID: opID,
		Status:      dps.StatusAssigned,
		RegistrationState: &dps.DeviceRegistrationState{
			RegistrationID: req.RegistrationID,
			AssignedHub:    "hub-1.example.net",
			DeviceID:       req.RegistrationID,
			Status:         dps.StatusAssigned,
			Substatus:      dps.SubstatusInitialAssignment,
		},
	}}, nil
}

func (f *fakeProvisioner) lastRequest(t testing.TB) provision.Request {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) == 0 {
		t.Fatal("engine received no request")
	}
	return f.requests[len(f.requests)-1]
}

// testServer is a Server on a real TLS listener at 127.0.0.1.
type testServer struct {
	*Server
	addr    string
	roots   *x509.CertPool
	serveCh chan error
}

func startServer(t testing.TB, p Provisioner, opts Options) *testServer {
	t.Helper()
	cert := newCert(t, "localhost")
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	opts.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, addr: l.Addr().String(), roots: roots, serveCh: make(chan error, 1)}
	go func() { ts.serveCh <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-ts.serveCh; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

// testWriter sends log output to t.Log so it shows only for failing tests.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// dialTLS opens a TLS connection to the test server, optionally with a
// client certificate.
func (ts *testServer) dialTLS(t testing.TB, clientCert *tls.Certificate) net.Conn {
	t.Helper()
	cfg := &tls.Config{RootCAs: ts.roots, ServerName: "127.0.0.1"}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	d := &net.Dialer{Timeout: ioTimeout}
	c, err := tls.DialWithDialer(d, "tcp", ts.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawClient speaks MQTT 3.1.1 packet by packet, so tests can check the
// exact order of what the server writes.
type rawClient struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func newRawClient(t testing.TB, c net.Conn) *rawClient {
	return &rawClient{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawClient) send(pk packets.Packet) {
	rc.t.Helper()
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
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		rc.t.Fatalf("send: unsupported packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		rc.t.Fatalf("encode: %v", err)
	}
	if _, err := rc.c.Write(buf.Bytes()); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// recv reads the next packet; it returns an error on EOF.
func (rc *rawClient) recv() (packets.Packet, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := rc.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b); err != nil {
		return packets.Packet{}, err
	}
	if fh.Remaining, _, err = packets.DecodeLength(rc.r); err != nil {
		return packets.Packet{}, err
	}
	body := make([]byte, fh.Remaining)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 4}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pingresp:
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d", fh.Type)
	}
	return pk, err
}

func (rc *rawClient) mustRecv(want byte) packets.Packet {
	rc.t.Helper()
	pk, err := rc.recv()
	if err != nil {
		rc.t.Fatalf("recv: %v", err)
	}
	if pk.FixedHeader.Type != want {
		rc.t.Fatalf("got packet type %s, want %s", packets.PacketNames[pk.FixedHeader.Type], packets.PacketNames[want])
	}
	return pk
}

type connectOpts struct {
	clientID  string
	username  string
	password  string
	noPass    bool
	clean     bool
	keepalive uint16
}

func (rc *rawClient) connect(o connectOpts) packets.Packet {
	rc.t.Helper()
	rc.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: o.clientID,
			Clean:            o.clean,
			Keepalive:        o.keepalive,
			UsernameFlag:     o.username != "",
			Username:         []byte(o.username),
			PasswordFlag:     !o.noPass,
			Password:         []byte(o.password),
		},
	})
	return rc.mustRecv(packets.Connack)
}

// connectDevice connects as regID with a SAS password and subscribes to
// the response filter.
func (rc *rawClient) connectDevice(regID string) {
	rc.t.Helper()
	ack := rc.connect(connectOpts{clientID: regID, username: testUsername(regID), password: testSAS, clean: true, keepalive: 180})
	if ack.ReasonCode != 0 || ack.SessionPresent {
		rc.t.Fatalf("CONNACK code %#x sessionPresent %v, want 0/false", ack.ReasonCode, ack.SessionPresent)
	}
	rc.subscribe(7, packets.Subscription{Filter: ResponseFilter, Qos: 1})
}

func (rc *rawClient) subscribe(id uint16, subs ...packets.Subscription) packets.Packet {
	rc.t.Helper()
	rc.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    id,
		Filters:     subs,
	})
	ack := rc.mustRecv(packets.Suback)
	if ack.PacketID != id {
		rc.t.Fatalf("SUBACK packet id %d, want %d", ack.PacketID, id)
	}
	return ack
}

func (rc *rawClient) publish(qos byte, id uint16, topic string, payload string) {
	rc.t.Helper()
	rc.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		PacketID:    id,
		TopicName:   topic,
		Payload:     []byte(payload),
	})
}

// request publishes a QoS 1 request, checks that its PUBACK comes before
// the response, acknowledges the response and returns it.
func (rc *rawClient) request(id uint16, topic, payload string) packets.Packet {
	rc.t.Helper()
	rc.publish(1, id, topic, payload)
	ack := rc.mustRecv(packets.Puback)
	if ack.PacketID != id {
		rc.t.Fatalf("PUBACK packet id %d, want %d", ack.PacketID, id)
	}
	return rc.response()
}

// response reads the next packet, which must be a QoS 1 response PUBLISH,
// and acknowledges it.
func (rc *rawClient) response() packets.Packet {
	rc.t.Helper()
	res := rc.mustRecv(packets.Publish)
	if res.FixedHeader.Qos != 1 || res.PacketID == 0 {
		rc.t.Fatalf("response QoS %d packet id %d, want QoS 1 with an id", res.FixedHeader.Qos, res.PacketID)
	}
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: res.PacketID})
	return res
}

func registerTopic(rid string) string { return "$dps/registrations/PUT/iotdps-register/?$rid=" + rid }

func statusTopic(rid, opID string) string {
	return "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=" + rid + "&operationId=" + opID
}
