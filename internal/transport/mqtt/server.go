package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/dpsd/dpsd/internal/connlimit"
	"github.com/dpsd/dpsd/internal/deadline"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/refusal"
)

// Provisioner is the engine as the transport sees it. Errors are *dps.Error
// values; anything else is answered as an internal error.
type Provisioner interface {
	Register(ctx context.Context, req provision.Request) (provision.Result, error)
	OperationStatus(ctx context.Context, req provision.Request, operationID string) (provision.Result, error)
}

// Transport names passed in provision.Request.Transport.
const (
	TransportMQTT          = "mqtt"
	TransportMQTTWebSocket = "mqtt-ws"
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("mqttdps: server closed")

// Defaults for Options.
const (
	DefaultMaxInflight    = 8
	DefaultConnectTimeout = 30 * time.Second
	// DefaultMaxIdle is the longest a connection may stay silent, whatever
	// keep-alive (0 included) it asked for. A DPS flow lasts seconds and
	// polls every few; the SDKs' keep-alives are well under it.
	DefaultMaxIdle = 4 * time.Minute
	// DefaultUnauthorizedGrace is how long a connection stays open after a
	// request was refused for its credentials: time for the device to read
	// the 401 and disconnect itself.
	DefaultUnauthorizedGrace = 2 * time.Second
)

// maxPacketSize bounds one MQTT packet. DPS requests are a few KiB at most
// (a custom payload or a CSR); the bound keeps a client from making the
// broker allocate arbitrary memory.
const maxPacketSize = 256 << 10

// busyRetryAfter is the retry hint sent with the 429 for a connection that
// has too many requests in flight, and with the 503 during shutdown.
const busyRetryAfter = time.Second

// Options configure a Server.
type Options struct {
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
	// Refusals logs and keeps every refused request; nil means a Log of
	// the transport's own over Logger.
	Refusals *refusal.Log
	// TLSConfig holds the server certificate. When set, Serve wraps plain
	// connections in TLS. Client certificates are
	// requested but not required (X.509 devices present one, symmetric-key
	// devices do not): a config with ClientAuth NoClientCert is changed to
	// RequestClientCert. The chain is passed to the engine unverified.
	TLSConfig *tls.Config
	// MaxInflight bounds the requests one connection may have in the engine
	// at once; further requests are answered 429. Zero means DefaultMaxInflight.
	MaxInflight int
	// ConnectTimeout bounds the TLS handshake and the wait for CONNECT.
	// Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxIdle bounds the silence of an accepted connection, keep-alive 0
	// included. Zero means DefaultMaxIdle.
	MaxIdle time.Duration
	// UnauthorizedGrace bounds how long a connection stays open once a
	// request was refused with 401. Zero means DefaultUnauthorizedGrace.
	UnauthorizedGrace time.Duration
	// ClaimWebSocket, when set, is offered every MQTT-over-WebSockets
	// connection first (with the client's certificates): built-in hubs
	// sharing the listener take the ones whose CONNECT is theirs. It
	// returns the connection, its bytes intact, when it did not take it.
	ClaimWebSocket func(c net.Conn, peers []*x509.Certificate) (net.Conn, bool)
}

// Server is the DPS MQTT transport. Create it with New.
type Server struct {
	prov           Provisioner
	log            *slog.Logger
	refusals       *refusal.Log
	tlsConfig      *tls.Config
	maxInflight    int
	connectTimeout time.Duration
	maxIdle        time.Duration
	unauthGrace    time.Duration
	claimWS        func(net.Conn, []*x509.Certificate) (net.Conn, bool)
	broker         *mqtt.Server

	// baseCtx is the parent of every connection's context; cancel ends
	// the engine calls still running when Close gives up waiting.
	baseCtx context.Context
	cancel  context.CancelFunc

	closeOnce sync.Once
	requests  sync.WaitGroup // requests in the engine
	conns     sync.WaitGroup // goroutines serving connections

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	active    map[net.Conn]*connState

	connSeq atomic.Uint64 // numbers connections for unique broker client ids
}

// connState is what the transport knows about one connection.
type connState struct {
	transport  string
	peerCerts  []*x509.Certificate
	remoteAddr string
	conn       *deadline.Conn
	// sess is set once the CONNECT has been accepted.
	sess *session
}

// New returns a Server that hands device requests to p.
func New(p Provisioner, opts Options) (*Server, error) {
	if p == nil {
		return nil, errors.New("mqttdps: nil Provisioner")
	}
	s := &Server{
		prov:           p,
		log:            opts.Logger,
		refusals:       opts.Refusals,
		maxInflight:    opts.MaxInflight,
		connectTimeout: opts.ConnectTimeout,
		maxIdle:        opts.MaxIdle,
		unauthGrace:    opts.UnauthorizedGrace,
		claimWS:        opts.ClaimWebSocket,
		listeners:      make(map[net.Listener]struct{}),
		active:         make(map[net.Conn]*connState),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.refusals == nil {
		s.refusals = refusal.New(refusal.Options{Logger: s.log})
	}
	if s.maxInflight <= 0 {
		s.maxInflight = DefaultMaxInflight
	}
	if s.connectTimeout <= 0 {
		s.connectTimeout = DefaultConnectTimeout
	}
	if s.maxIdle <= 0 {
		s.maxIdle = DefaultMaxIdle
	}
	if s.unauthGrace <= 0 {
		s.unauthGrace = DefaultUnauthorizedGrace
	}
	if opts.TLSConfig != nil {
		s.tlsConfig = opts.TLSConfig.Clone()
		if s.tlsConfig.ClientAuth == tls.NoClientCert {
			s.tlsConfig.ClientAuth = tls.RequestClientCert
		}
	}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxPacketSize
	caps.RetainAvailable = 0    // DPS keeps no messages
	caps.SharedSubAvailable = 0 // only $dps/registrations/res/# is allowed
	caps.MaximumSessionExpiryInterval = 0
	s.broker = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       slog.New(brokerLogHandler{s.log.With("component", "mqtt-broker").Handler()}),
	})
	if err := s.broker.AddHook(&hook{s: s}, nil); err != nil {
		return nil, fmt.Errorf("mqttdps: add broker hook: %w", err)
	}
	// The broker has no listeners of its own (connections come from Serve,
	// ServeConn and the WebSocket handler); Serve only starts its
	// housekeeping loop.
	if err := s.broker.Serve(); err != nil {
		return nil, fmt.Errorf("mqttdps: start broker: %w", err)
	}
	return s, nil
}

// TLSConn is a connection that is TLS already: a *tls.Conn, or one that
// wraps it (the node's shared listeners hand over connections whose first
// bytes were read to see which server they are for).
type TLSConn interface {
	net.Conn
	HandshakeContext(context.Context) error
	ConnectionState() tls.ConnectionState
}

// Serve accepts connections on l and serves each in its own goroutine until
// l fails or Close is called; it then returns ErrServerClosed. When
// Options.TLSConfig is set, l should be a plain TCP listener (connections
// that already are TLS — a *tls.Conn, or a TLSConn that wraps one — are
// not wrapped twice). Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	if !s.trackListener(l, true) {
		l.Close()
		return ErrServerClosed
	}
	defer s.trackListener(l, false)
	defer l.Close()

	for {
		c, err := connlimit.Accept(l, s.log, "mqtt")
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			return fmt.Errorf("mqttdps: accept: %w", err)
		}
		if !s.startConn() {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.conns.Done()
			s.serveConn(c, TransportMQTT, nil, true)
		}()
	}
}

// serveConn runs the TLS handshake (if wanted), then hands c to the broker
// and waits until the MQTT session ends.
func (s *Server) serveConn(c net.Conn, transport string, peerCerts []*x509.Certificate, wrapTLS bool) {
	if wrapTLS && s.tlsConfig != nil {
		if _, ok := c.(TLSConn); !ok {
			c = tls.Server(c, s.tlsConfig)
		}
	}
	// The broker reads the CONNECT under this deadline, then replaces it
	// with 1.5 × the keep-alive after every packet (none for keep-alive
	// 0); dc caps those at maxIdle.
	_ = c.SetDeadline(time.Now().Add(s.connectTimeout))
	if tc, ok := c.(TLSConn); ok {
		ctx, cancel := context.WithTimeout(s.baseCtx, s.connectTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.log.Debug("mqtt TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		peerCerts = tc.ConnectionState().PeerCertificates
	}
	if len(peerCerts) == 0 {
		peerCerts = nil // "no certificate" reads the same on every path
	}

	dc := deadline.Idle(c, s.maxIdle)
	cs := &connState{transport: transport, peerCerts: peerCerts, remoteAddr: c.RemoteAddr().String(), conn: dc}
	if !s.trackConn(dc, cs, true) {
		c.Close()
		return
	}
	defer s.trackConn(dc, cs, false)

	err := s.broker.EstablishConnection(transport, dc)
	s.endSession(cs)
	s.log.Debug("mqtt connection ended", "remote", cs.remoteAddr, "transport", transport, "err", err)
}

// endSession releases what a connection's session holds. The broker calls
// OnDisconnect for sessions that reached the read loop; this also covers
// the ones it abandons earlier (e.g. when the CONNACK cannot be written).
func (s *Server) endSession(cs *connState) {
	s.mu.Lock()
	sess := cs.sess
	s.mu.Unlock()
	if sess == nil {
		return
	}
	sess.cancel()
	s.broker.UnsubscribeClient(sess.cl)
	if cl, ok := s.broker.Clients.Get(sess.cl.ID); ok && cl == sess.cl {
		s.broker.Clients.Delete(sess.cl.ID)
	}
}

// startConn counts a connection goroutine unless the server is closing.
// The check and the Add happen under s.mu so that Close, which sets closing
// under s.mu before it waits, never races an Add.
func (s *Server) startConn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns.Add(1)
	return true
}

func (s *Server) trackListener(l net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.listeners[l] = struct{}{}
	} else {
		delete(s.listeners, l)
	}
	return true
}

func (s *Server) trackConn(c net.Conn, cs *connState, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.active[c] = cs
	} else {
		delete(s.active, c)
	}
	return true
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Close shuts the server down gracefully: it stops accepting connections,
// answers new requests with 503, waits for the requests already in the
// engine to be answered, then closes every connection. If ctx ends first,
// the engine calls still running are canceled, the connections are closed
// at once, and ctx's error is returned. Close does not close the HTTP
// server that carries the WebSocket handler, but it does close the
// WebSocket connections.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()

	var err error
	if !waitCtx(ctx, &s.requests) {
		err = ctx.Err()
	}
	s.cancel()

	// Close outside the lock: a connection whose peer stopped reading may
	// take a moment to close, and the broker's hooks need the lock.
	s.mu.Lock()
	active := make([]net.Conn, 0, len(s.active))
	for c := range s.active {
		active = append(active, c)
	}
	s.mu.Unlock()
	for _, c := range active {
		c.Close()
	}
	if err == nil && !waitCtx(ctx, &s.conns) {
		err = ctx.Err()
	}
	s.closeOnce.Do(func() { _ = s.broker.Close() })
	return err
}

// waitCtx waits for wg or ctx, whichever comes first, and reports whether
// wg finished.
func waitCtx(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
