package builtinhub

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/internal/deadline"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/tlsmux"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
)

// Protocol names a shared listener's protocol.
type Protocol string

// The protocols of a hub's endpoints.
const (
	ProtocolHTTPS Protocol = "https" // REST API, device HTTPS, MQTT and AMQP over WebSockets
	ProtocolMQTT  Protocol = "mqtt"  // MQTT over TLS
	ProtocolAMQP  Protocol = "amqp"  // AMQP 1.0 over TLS
)

// Shared describes the endpoint the hubs without an address of their own
// share: by default the node's own listeners, which hand over the
// connections whose TLS server name is a hub's (see tlsmux).
type Shared struct {
	// Address is the IP address clients reach the shared endpoint on; it
	// goes into the hubs' certificates and the hosts-file line.
	Address string
	// HTTPSAddr, MQTTAddr and AMQPAddr are the listeners' addresses, as
	// shown to users.
	HTTPSAddr, MQTTAddr, AMQPAddr string
}

// front is the shared endpoint: it finishes the TLS handshakes of the
// connections handed to it and gives each to its hub, told apart by what
// the protocol carries — the TLS server name first, then the MQTT user
// name, the HTTP Host header or the SAS token's resource.
type front struct {
	m    *Manager
	tls  *tls.Config
	http *http.Server
	conn chan net.Conn // raw HTTPS connections for http
	done chan struct{}
	ctx  context.Context // ends with close: the AMQP connections' context
	stop context.CancelFunc
	once sync.Once
	wg   sync.WaitGroup
}

func newFront(m *Manager) *front {
	f := &front{m: m, conn: make(chan net.Conn), done: make(chan struct{})}
	f.ctx, f.stop = context.WithCancel(context.Background())
	f.tls = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: f.certificate,
		// X.509 devices present a certificate; SAS devices do not.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"http/1.1"},
	}
	f.http = &http.Server{
		Handler:           http.HandlerFunc(f.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelDebug),
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		_ = f.http.Serve(tls.NewListener(chanListener{f}, f.tls))
	}()
	return f
}

// certificate picks the certificate of the hub the client names; a client
// that names none (it dialled an IP address) gets any hub's, all of which
// cover the shared address.
func (f *front) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if h := f.m.byHost(hello.ServerName); h != nil {
		return &h.cert, nil
	}
	if h := f.m.anyHub(); h != nil {
		return &h.cert, nil
	}
	return nil, fmt.Errorf("no built-in hub is named %q", hello.ServerName)
}

// serveConn serves a raw connection of protocol p; it returns when the
// connection ends.
func (f *front) serveConn(p Protocol, c net.Conn) {
	switch p {
	case ProtocolHTTPS:
		select {
		case f.conn <- c:
		case <-f.done:
			c.Close()
		}
	case ProtocolMQTT:
		f.serveMQTT(c)
	case ProtocolAMQP:
		f.serveAMQP(c)
	default:
		f.m.log.Debug("built-in hubs: no shared endpoint for protocol", "protocol", p, "remote", c.RemoteAddr().String())
		c.Close()
	}
}

func (f *front) serveMQTT(c net.Conn) {
	timeout := f.m.opt.ConnectTimeout
	tc := tls.Server(c, f.tls)
	_ = tc.SetDeadline(time.Now().Add(timeout))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		f.m.log.Debug("hub mqtt TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	state := tc.ConnectionState()
	var conn net.Conn = tc
	h := f.m.byHost(state.ServerName)
	if h == nil {
		// No server name: the CONNECT says which hub.
		id, user, read, err := mqttConnect(tc, maxMQTTPacket)
		conn = tlsmux.PrependTLS(tc, read)
		if h = f.m.hubOfConnect(id, user); h == nil {
			f.m.log.Info("hub mqtt connection for no hub", "remote", c.RemoteAddr().String(), "userName", user, "err", err)
			c.Close()
			return
		}
	}
	if !h.enter() {
		c.Close()
		return
	}
	defer h.wg.Done()
	h.serveMQTT(conn, listenerTLS, state.PeerCertificates)
}

// ClaimMQTT takes an MQTT connection whose TLS handshake (done) named no
// server, as a device dialling an IP address (GatewayHostName) does. It
// reads the CONNECT and, when its user name ({hubHostName}/{deviceId}/…)
// is a hub's, serves the connection until it ends and returns true.
// Otherwise it returns the connection, its bytes intact, for the node's
// own MQTT server.
func (m *Manager) ClaimMQTT(tc *tls.Conn) (net.Conn, bool) {
	_ = tc.SetReadDeadline(time.Now().Add(m.opt.ConnectTimeout))
	id, user, read, err := mqttConnect(tc, maxMQTTPacket)
	_ = tc.SetReadDeadline(time.Time{})
	if errors.Is(err, errShortConnect) {
		// No whole CONNECT in the time either server would wait for it.
		tc.Close()
		return nil, true
	}
	rc := tlsmux.PrependTLS(tc, read)
	h := m.hubOfConnect(id, user)
	if h == nil || !h.enter() {
		return rc, false
	}
	defer h.wg.Done()
	h.serveMQTT(rc, listenerTLS, tc.ConnectionState().PeerCertificates)
	return nil, true
}

// ClaimMQTTWebSocket is ClaimMQTT for MQTT over WebSockets on the node's
// HTTPS listener, upgraded by the provisioning service because the
// request named no hub (a device that dialled the shared address). A
// connection that sends no whole CONNECT in time is closed (and claimed).
func (m *Manager) ClaimMQTTWebSocket(c net.Conn, peers []*x509.Certificate) (net.Conn, bool) {
	if m == nil || m.front == nil || !m.Running() {
		return c, false
	}
	_ = c.SetReadDeadline(time.Now().Add(m.opt.ConnectTimeout))
	id, user, read, err := mqttConnect(c, maxMQTTPacket)
	_ = c.SetReadDeadline(time.Time{})
	if errors.Is(err, errShortConnect) {
		c.Close()
		return nil, true
	}
	rc := tlsmux.Prepend(c, read)
	h := m.hubOfConnect(id, user)
	if h == nil || !h.enter() {
		return rc, false
	}
	defer h.wg.Done()
	h.serveMQTT(rc, listenerWebSocket, peers)
	return nil, true
}

// hubOfConnect finds the hub an MQTT CONNECT is for: the one whose host
// name starts the user name ({hubHostName}/{deviceId}/…); or, when the
// user name starts with an IP address (a device that names its hub by
// dpsd's address, as X.509 devices of the Node SDK must), the one hub
// that has a device with the client id.
func (m *Manager) hubOfConnect(clientID, user string) *Hub {
	host, _, _ := strings.Cut(user, "/")
	host = hostOnly(host)
	if h := m.byHost(host); h != nil {
		return h
	}
	if net.ParseIP(host) == nil || clientID == "" {
		return nil
	}
	m.mu.Lock()
	hubs := make([]*Hub, 0, len(m.hubs))
	for _, h := range m.hubs {
		if h.isAlias(host) {
			hubs = append(hubs, h)
		}
	}
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), twinRequestTimeout)
	defer cancel()
	var found *Hub
	for _, h := range hubs {
		if _, err := h.loadTwin(ctx, clientID); err == nil {
			if found != nil {
				return nil // ambiguous: the user name must name the hub
			}
			found = h
		}
	}
	return found
}

// serveHTTP gives a request on the shared HTTPS endpoint to its hub.
func (f *front) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if f.m.serveAMQPWebSocket(w, r) {
		return
	}
	h := f.m.hubOfRequest(r)
	if h == nil {
		deadline.Body(w, r, f.m.opt.BodyTimeout)
		http.Error(w, "no built-in hub is named "+r.Host, http.StatusNotFound)
		return
	}
	h.serveHTTP(w, r)
}

// amqpWebSocketSubprotocol is the WebSocket subprotocol of AMQP 1.0
// (AMQP WebSocket binding), which the SDKs' AMQP-over-WebSockets
// transports offer on /$iothub/websocket.
const amqpWebSocketSubprotocol = "AMQPWSB10"

// serveAMQPWebSocket serves AMQP over WebSockets when r asks for it and
// reports whether it did. The connection's hub is found as for AMQP over
// TLS: by the open frame's host name or the first put-token's audience.
func (m *Manager) serveAMQPWebSocket(w http.ResponseWriter, r *http.Request) bool {
	if m.amqp == nil || m.front == nil || !wsconn.IsUpgrade(r) || !wsconn.Offers(r, amqpWebSocketSubprotocol) {
		return false
	}
	c, err := wsconn.UpgradeSubprotocol(w, r, amqpWebSocketSubprotocol)
	if err != nil {
		return true // answered
	}
	_ = m.amqp.ServeConn(m.front.ctx, c)
	return true
}

// hubOfRequest finds the hub an HTTPS request is for: by the TLS server
// name, the Host header, then the resource of its SAS token.
func (m *Manager) hubOfRequest(r *http.Request) *Hub {
	if r.TLS != nil {
		if h := m.byHost(r.TLS.ServerName); h != nil {
			return h
		}
	}
	if h := m.byHost(hostOnly(r.Host)); h != nil {
		return h
	}
	if tok, err := sas.Parse(r.Header.Get("Authorization")); err == nil {
		if res, err := tok.DecodedResource(); err == nil {
			host, _, _ := strings.Cut(res, "/")
			return m.byHost(hostOnly(host))
		}
	}
	return nil
}

func hostOnly(hostPort string) string {
	if h, _, err := net.SplitHostPort(hostPort); err == nil {
		return h
	}
	return hostPort
}

func (f *front) close(ctx context.Context) error {
	f.once.Do(func() { close(f.done); f.stop() })
	err := f.http.Shutdown(ctx)
	f.http.Close()
	f.wg.Wait()
	return err
}

// chanListener is the listener of the shared HTTPS server: the
// connections handed to the front.
type chanListener struct{ f *front }

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.f.conn:
		return c, nil
	case <-l.f.done:
		return nil, net.ErrClosed
	}
}

func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4zero} }

// errShortConnect is a connection that did not send a whole CONNECT.
var errShortConnect = errors.New("no whole CONNECT")

// mqttConnect reads the MQTT CONNECT packet at the start of r and returns
// its client id and user name, and every byte it read. At most limit
// bytes are read. Read failures are errShortConnect.
func mqttConnect(r io.Reader, limit int) (string, string, []byte, error) {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:2]); err != nil {
		return "", "", head[:0], fmt.Errorf("%w: %v", errShortConnect, err)
	}
	if head[0] != 0x10 {
		return "", "", head[:2], errors.New("first packet is not CONNECT")
	}
	// Remaining length: up to four 7-bit groups.
	n, size, mult := 1, 0, 1
	for {
		b := head[n]
		size += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		if n == 4 {
			return "", "", head[:n+1], errors.New("malformed remaining length")
		}
		mult *= 128
		n++
		if _, err := io.ReadFull(r, head[n:n+1]); err != nil {
			return "", "", head[:n], fmt.Errorf("%w: %v", errShortConnect, err)
		}
	}
	read := slices.Clone(head[:n+1])
	if size > limit {
		return "", "", read, fmt.Errorf("CONNECT of %d bytes", size)
	}
	body := make([]byte, size)
	m, err := io.ReadFull(r, body)
	read = append(read, body[:m]...)
	if err != nil {
		return "", "", read, fmt.Errorf("%w: %v", errShortConnect, err)
	}
	p := bytes.NewReader(body)
	str := func() ([]byte, error) {
		var l uint16
		if err := binary.Read(p, binary.BigEndian, &l); err != nil {
			return nil, err
		}
		b := make([]byte, l)
		_, err := io.ReadFull(p, b)
		return b, err
	}
	if _, err := str(); err != nil { // protocol name
		return "", "", read, errors.New("malformed CONNECT")
	}
	var fixed [4]byte // level, flags, keep-alive
	if _, err := io.ReadFull(p, fixed[:]); err != nil {
		return "", "", read, errors.New("malformed CONNECT")
	}
	if fixed[0] >= 5 {
		return "", "", read, errors.New("MQTT 5 CONNECT")
	}
	flags := fixed[1]
	id, err := str()
	if err != nil {
		return "", "", read, errors.New("malformed CONNECT")
	}
	if flags&0x04 != 0 { // will topic and message
		if _, err := str(); err != nil {
			return "", "", read, errors.New("malformed CONNECT")
		}
		if _, err := str(); err != nil {
			return "", "", read, errors.New("malformed CONNECT")
		}
	}
	if flags&0x80 == 0 {
		return string(id), "", read, errors.New("CONNECT has no user name")
	}
	user, err := str()
	if err != nil {
		return "", "", read, errors.New("malformed CONNECT")
	}
	return string(id), string(user), read, nil
}
