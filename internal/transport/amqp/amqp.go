// Package amqp serves the DPS device API over AMQP 1.0: on a TLS listener
// (port 5671 in Azure) and over WebSockets (on the HTTPS port, subprotocol
// "AMQPWSB10").
//
// The AMQP protocol itself is internal/amqp; this package speaks DPS on top
// of it, as the Azure device SDKs expect (docs/compatibility.md, "AMQP"):
// SASL PLAIN with the user name {idScope}/registrations/{registrationId}
// and the SAS token as password, or no SASL at all for X.509 devices; a
// sender and a receiver link addressed {idScope}/registrations/{id}
// (the C SDK prefixes amqps://{host}/); requests carry the application
// property iotdps-operation-type, polls iotdps-operation-id; answers go to
// the device's receiver link with the request's correlation id, the same
// JSON body as HTTPS and a retry-after property; refusals are the rejected
// delivery state with the DPS error JSON as description.
//
// All decisions are the engine's: the transport accepts any well-formed
// credentials and passes them to the engine with every request, so a bad
// SAS token is answered as a rejected request, as over MQTT.
package amqp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/connlimit"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/jsonlimit"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/refusal"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
)

// Provisioner is the engine as the transport sees it. Errors are *dps.Error
// values; anything else is answered as an internal error.
type Provisioner interface {
	Register(ctx context.Context, req provision.Request) (provision.Result, error)
	OperationStatus(ctx context.Context, req provision.Request, operationID string) (provision.Result, error)
}

// Transport names passed in provision.Request.Transport.
const (
	TransportAMQP          = "amqp"
	TransportAMQPWebSocket = "amqp-ws"
)

// WebSocketSubprotocol is the WebSocket subprotocol of AMQP 1.0.
const WebSocketSubprotocol = "AMQPWSB10"

// Wire names of the DPS exchange.
const (
	propOperationType = "iotdps-operation-type"
	propOperationID   = "iotdps-operation-id"
	propRetryAfter    = "retry-after"
	// propRetryAfterCS is how the C# SDK spells it.
	propRetryAfterCS = "Retry-After"
	opRegister       = "iotdps-register"
	opStatus         = "iotdps-get-operationstatus"
	linkAPIVersion   = wire.Symbol("com.microsoft:api-version")
	linkClientVer    = wire.Symbol("com.microsoft:client-version")
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("amqp: server closed")

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	// Refusals logs and keeps every refused request; nil means a Log of
	// the transport's own over Logger.
	Refusals *refusal.Log
	// TLSConfig holds the server certificate. Client certificates are
	// requested, not required (a config with NoClientCert is changed to
	// RequestClientCert); the engine verifies them.
	TLSConfig *tls.Config
	// MaxInflight bounds the requests one connection may have in the
	// engine (it is also each link's AMQP credit); further requests are
	// refused with 429. Default 8.
	MaxInflight int
	// HandshakeTimeout bounds the TLS handshake, the AMQP headers, SASL
	// and the open exchange; default 30 s.
	HandshakeTimeout time.Duration
	// AnswerTimeout bounds the wait for the device's credit to send an
	// answer; default 30 s.
	AnswerTimeout time.Duration
	// Claim, when set, is offered every connection whose SASL exchange
	// names no registration (the built-in hubs' ClaimAMQP, which share
	// the listeners): a connection it says is its own (named) gets its
	// link handler; one it returns a handler for without naming goes to
	// that handler unless its first link is a registration's; an error
	// refuses the connection.
	Claim func(c *wire.Conn) (h wire.LinkHandler, named bool, err error)
	// MaxSessions bounds the sessions of one connection; default 4. A
	// listener shared with the built-in hubs needs as many as their
	// Event Hubs-compatible consumers open.
	MaxSessions int
	// IDScope is the instance's ID scope: the scope of a TPM device whose
	// SASL exchange names none (the early C SDK's, which sent its
	// endorsement key alone).
	IDScope string
}

// Server is the DPS AMQP transport. Create it with New.
type Server struct {
	prov          Provisioner
	log           *slog.Logger
	refusals      *refusal.Log
	maxInflight   int
	tlsConfig     *tls.Config
	handshake     time.Duration
	answerTimeout time.Duration
	claim         func(*wire.Conn) (wire.LinkHandler, bool, error)
	scope         string
	wire          *wire.Server

	baseCtx context.Context
	cancel  context.CancelFunc

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     sync.WaitGroup
	requests  sync.WaitGroup // requests in the engine
}

// New returns a Server that hands device requests to p.
func New(p Provisioner, opts Options) (*Server, error) {
	if p == nil {
		return nil, errors.New("amqp: nil Provisioner")
	}
	s := &Server{
		prov:          p,
		log:           opts.Logger,
		refusals:      opts.Refusals,
		maxInflight:   opts.MaxInflight,
		handshake:     opts.HandshakeTimeout,
		answerTimeout: opts.AnswerTimeout,
		claim:         opts.Claim,
		scope:         opts.IDScope,
		listeners:     make(map[net.Listener]struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.refusals == nil {
		s.refusals = refusal.New(refusal.Options{Logger: s.log})
	}
	if s.handshake <= 0 {
		s.handshake = 30 * time.Second
	}
	if s.maxInflight <= 0 {
		s.maxInflight = 8
	}
	if s.answerTimeout <= 0 {
		s.answerTimeout = 30 * time.Second
	}
	if opts.TLSConfig != nil {
		s.tlsConfig = opts.TLSConfig.Clone()
		if s.tlsConfig.ClientAuth == tls.NoClientCert {
			s.tlsConfig.ClientAuth = tls.RequestClientCert
		}
		// AMQP has no ALPN name the SDKs send; the HTTPS config's
		// "http/1.1" must not be required.
		s.tlsConfig.NextProtos = nil
	}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())
	s.wire = wire.NewServer(wire.Options{
		Handler: handler{s},
		// PLAIN carries the SAS token; X.509 devices of every SDK skip
		// SASL, but EXTERNAL and ANONYMOUS cost nothing to accept: the
		// engine decides with the certificate. TPM devices prove
		// themselves through the TPM mechanism's challenge (tpm.go).
		// MSSBCBS is the C SDK's for IoT Hub connections that put their
		// token on $cbs: offered for the hubs that share the listener.
		SASL: []wire.SASLServer{
			wire.PlainServer(nil),
			{Name: "TPM", New: func(host string) wire.SASLMechanism { return &tpmSASL{s: s, hostname: host} }},
			{Name: "EXTERNAL", New: func(string) wire.SASLMechanism { return &wire.External{} }},
			{Name: "ANONYMOUS", New: func(string) wire.SASLMechanism { return &wire.Anonymous{} }},
			wire.CBSServer(),
		},
		AllowNoSASL:      true,
		MaxSessions:      opts.MaxSessions,
		LinkCredit:       uint32(s.maxInflight),
		HandshakeTimeout: s.handshake,
		Logger:           s.log.With("component", "amqp"),
	})
	return s, nil
}

// Serve accepts connections on l (a plain TCP listener: Serve adds TLS
// when Options.TLSConfig is set) until Close; it then returns
// ErrServerClosed. Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	if !s.track(l, true) {
		l.Close()
		return ErrServerClosed
	}
	defer s.track(l, false)
	defer l.Close()
	for {
		c, err := connlimit.Accept(l, s.log, "amqp")
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			return fmt.Errorf("amqp: accept: %w", err)
		}
		if !s.startConn() {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.conns.Done()
			s.serveConn(c, TransportAMQP, nil)
		}()
	}
}

// WebSocketHandler returns the handler of AMQP over WebSockets; mount it
// for upgrade requests that offer WebSocketSubprotocol. It returns when
// the connection ends.
func (s *Server) WebSocketHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.startConn() {
			http.Error(w, "server shutting down", http.StatusServiceUnavailable)
			return
		}
		defer s.conns.Done()
		c, err := wsconn.UpgradeSubprotocol(w, r, WebSocketSubprotocol)
		if err != nil {
			s.log.Debug("amqp websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
			return
		}
		var peers []*x509.Certificate
		if r.TLS != nil {
			peers = r.TLS.PeerCertificates
		}
		s.serveConn(c, TransportAMQPWebSocket, peers)
	})
}

func (s *Server) serveConn(c net.Conn, transport string, peers []*x509.Certificate) {
	if s.tlsConfig != nil && transport == TransportAMQP {
		tc := tls.Server(c, s.tlsConfig)
		ctx, cancel := context.WithTimeout(s.baseCtx, s.handshake)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.log.Debug("amqp TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		peers = tc.ConnectionState().PeerCertificates
		c = tc
	}
	ctx := context.WithValue(s.baseCtx, connInfoKey{}, &connInfo{transport: transport, peers: peers})
	err := s.wire.ServeConn(ctx, c)
	s.log.Debug("amqp connection ended", "remote", c.RemoteAddr().String(), "transport", transport, "err", err)
}

type connInfoKey struct{}

type connInfo struct {
	transport string
	peers     []*x509.Certificate
}

func (s *Server) startConn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns.Add(1)
	return true
}

func (s *Server) track(l net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.listeners, l)
		return true
	}
	if s.closing {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Close shuts the server down gracefully: it stops accepting connections,
// refuses new requests with 503, waits for the requests already in the
// engine to be answered, then closes every connection (each peer is told
// with amqp:connection:forced). If ctx ends first, the engine calls still
// running are cancelled and ctx's error is returned.
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
	if !waitCtx(ctx, &s.conns) && err == nil {
		err = ctx.Err()
	}
	return err
}

// waitCtx waits for wg or ctx and reports whether wg finished.
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

// startRequest counts a request unless the server is closing.
func (s *Server) startRequest() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.requests.Add(1)
	return true
}

// handler adapts wire connections to DPS.
type handler struct{ s *Server }

func (h handler) Open(c *wire.Conn) (wire.LinkHandler, error) {
	info, _ := c.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		info = &connInfo{transport: TransportAMQP}
	}
	d := &device{
		s:          h.s,
		conn:       c,
		transport:  info.transport,
		peers:      info.peers,
		remoteAddr: c.NetConn().RemoteAddr().String(),
		slots:      make(chan struct{}, h.s.maxInflight),
	}
	if len(d.peers) == 0 {
		d.peers = nil
	}
	name, mech := c.SASL()
	var other wire.LinkHandler
	if h.s.claim != nil && !namesRegistration(mech) {
		lh, named, err := h.s.claim(c)
		if err != nil {
			return nil, err
		}
		if named {
			return lh, nil
		}
		other = lh
	}
	if p, ok := mech.(*wire.Plain); ok {
		scope, regID, ok := parseIdentity(p.Username)
		if !ok {
			return nil, &wire.Error{Condition: wire.ErrUnauthorized,
				Description: fmt.Sprintf("the SASL user name %q is not {idScope}/registrations/{registrationId}", p.Username)}
		}
		d.scope, d.regID, d.sasToken = scope, regID, p.Password
	}
	if m, ok := mech.(*tpmSASL); ok {
		d.scope, d.regID, d.sasToken, d.tpm = m.scope, m.regID, m.sasToken, m.keys()
	}
	d.log = h.s.log.With("remote", d.remoteAddr, "transport", d.transport, "sasl", string(name))
	if other != nil {
		return &firstLink{dps: d, other: other}, nil
	}
	return d, nil
}

// namesRegistration reports whether a connection's SASL exchange named a
// registration: PLAIN with {idScope}/registrations/{id}, or TPM.
func namesRegistration(mech wire.SASLMechanism) bool {
	switch m := mech.(type) {
	case *wire.Plain:
		_, _, ok := parseIdentity(m.Username)
		return ok
	case *tpmSASL:
		return true
	}
	return false
}

// firstLink is the handler of a connection that named neither a
// registration nor a hub when it opened (an X.509 device skips SASL, as
// a hub device that dialled the address does): its first link's address
// decides whether it is the provisioning service's (a registration's) or
// the other service's on the listener.
type firstLink struct {
	dps   *device
	other wire.LinkHandler

	mu     sync.Mutex
	chosen wire.LinkHandler
}

func (f *firstLink) handler() wire.LinkHandler {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.chosen
}

func (f *firstLink) Attach(l *wire.Link) error {
	f.mu.Lock()
	if f.chosen == nil {
		// Registration addresses never start with '/', the hubs' device
		// and service nodes always do ($cbs and the Event Hubs nodes
		// have no '/registrations/').
		f.chosen = f.other
		if _, _, ok := parseIdentity(l.Address); ok && !strings.HasPrefix(l.Address, "/") {
			f.chosen = f.dps
		}
	}
	h := f.chosen
	f.mu.Unlock()
	return h.Attach(l)
}

func (f *firstLink) Message(ctx context.Context, d *wire.Delivery) {
	if h := f.handler(); h != nil {
		h.Message(ctx, d)
	}
}

func (f *firstLink) Detach(l *wire.Link) {
	if h := f.handler(); h != nil {
		h.Detach(l)
	}
}

func (f *firstLink) Close(err error) {
	if h := f.handler(); h != nil {
		h.Close(err)
	}
}

// device is one device's connection.
type device struct {
	s          *Server
	conn       *wire.Conn
	log        *slog.Logger
	transport  string
	peers      []*x509.Certificate
	remoteAddr string
	sasToken   string
	// tpm is the keys a TPM device sent in the SASL exchange.
	tpm *dps.TPMAttestation
	// slots bounds the requests this connection has in the engine (link
	// credit bounds each link, but a device may open several links).
	slots chan struct{}

	mu         sync.Mutex
	scope      string
	regID      string
	apiVersion string
	reply      *wire.Link // the device's receiver link
}

// parseIdentity reads {idScope}/registrations/{registrationId} from a SASL
// user name or a link address. The C SDK's addresses start with
// amqps://{host}/.
func parseIdentity(s string) (scope, regID string, ok bool) {
	if _, rest, found := strings.Cut(s, "://"); found {
		_, s, found = strings.Cut(rest, "/")
		if !found {
			return "", "", false
		}
	}
	parts := strings.Split(strings.Trim(s, "/"), "/")
	if len(parts) != 3 || !strings.EqualFold(parts[1], "registrations") || parts[0] == "" || parts[2] == "" {
		return "", "", false
	}
	return parts[0], parts[2], true
}

func (d *device) Attach(l *wire.Link) error {
	scope, regID, ok := parseIdentity(l.Address)
	if !ok {
		return &wire.Error{Condition: wire.ErrNotFound,
			Description: fmt.Sprintf("no such node %q: link to {idScope}/registrations/{registrationId}", l.Address)}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.regID == "" {
		d.scope, d.regID = scope, regID
	} else if !strings.EqualFold(d.scope, scope) || !strings.EqualFold(d.regID, regID) {
		return &wire.Error{Condition: wire.ErrUnauthorized,
			Description: fmt.Sprintf("the link address %q names another registration than %s/registrations/%s", l.Address, d.scope, d.regID)}
	}
	if v, ok := l.Properties.Get(linkAPIVersion); ok {
		if s, ok := v.(string); ok && d.apiVersion == "" {
			d.apiVersion = s
		}
	}
	if !l.PeerIsSender {
		d.reply = l
	}
	return nil
}

func (d *device) Detach(l *wire.Link) {
	d.mu.Lock()
	if d.reply == l {
		d.reply = nil
	}
	d.mu.Unlock()
}

func (d *device) Close(err error) {}

// Message serves one request.
func (d *device) Message(ctx context.Context, dl *wire.Delivery) {
	m := dl.Message
	op, _ := m.ApplicationProperties[propOperationType].(string)
	log := d.log.With("op", op)
	select {
	case d.slots <- struct{}{}:
		defer func() { <-d.slots }()
	default:
		e := dps.Errorf(dps.CodeThrottled, "Too many requests in flight on this connection.")
		e.RetryAfter = time.Second
		d.refuse(dl, e, log)
		return
	}
	if !d.s.startRequest() {
		e := dps.Errorf(dps.CodeServiceUnavailable, "The service is shutting down.")
		e.RetryAfter = time.Second
		d.refuse(dl, e, log)
		return
	}
	defer d.s.requests.Done()
	defer func() {
		// A bug in the engine must cost one request, not the process.
		if v := recover(); v != nil {
			log.Error("panic handling amqp request", "panic", v)
			d.refuse(dl, fmt.Errorf("panic: %v", v), log)
		}
	}()
	d.mu.Lock()
	req := provision.Request{
		IDScope:          d.scope,
		RegistrationID:   d.regID,
		SASToken:         d.sasToken,
		PeerCertificates: d.peers,
		APIVersion:       d.apiVersion,
		RemoteAddr:       d.remoteAddr,
		Transport:        d.transport,
		TPM:              d.tpm,
	}
	d.mu.Unlock()

	var (
		res provision.Result
		err error
	)
	switch op {
	case opRegister:
		var tpm *dps.TPMAttestation
		req.Payload, tpm, req.CSR, err = registerPayload(m.Body())
		if tpm != nil && tpm.EndorsementKey != "" {
			req.TPM = tpm
		}
		if err != nil {
			d.refuse(dl, dps.Errorf(dps.CodeBadRequest, "Invalid request body: %v.", err), log)
			return
		}
		res, err = d.s.prov.Register(ctx, req)
	case opStatus:
		// The body is ignored: Node sends "", C# an amqp-value naming
		// the operation, the C SDK nothing or the register JSON.
		opID, _ := m.ApplicationProperties[propOperationID].(string)
		if opID == "" {
			d.refuse(dl, dps.Errorf(dps.CodeBadRequest, "The %s application property is required.", propOperationID), log)
			return
		}
		log = log.With("operationId", opID)
		res, err = d.s.prov.OperationStatus(ctx, req, opID)
	default:
		d.refuse(dl, dps.Errorf(dps.CodeBadRequest, "Unsupported %s %q; want %s or %s.", propOperationType, op, opRegister, opStatus), log)
		return
	}
	if err == nil && res.Operation == nil {
		err = fmt.Errorf("engine returned no operation for %s", op)
	}
	if err != nil {
		d.refuse(dl, err, log)
		return
	}
	body, err := json.Marshal(res.Operation)
	if err != nil {
		d.refuse(dl, fmt.Errorf("encode operation: %w", err), log)
		return
	}
	d.mu.Lock()
	reply := d.reply
	d.mu.Unlock()
	if reply == nil {
		d.refuse(dl, dps.Errorf(dps.CodeBadRequest, "Attach a receiver link to %s/registrations/%s before sending requests.", req.IDScope, req.RegistrationID), log)
		return
	}
	props := map[string]any{}
	if !dps.Terminal(res.Operation.Status) {
		ra := httperr.RetryAfterSeconds(res.RetryAfter)
		props[propRetryAfter], props[propRetryAfterCS] = ra, ra
	}
	answer := &wire.Message{
		Properties:            wire.Properties{CorrelationID: correlationID(m), ContentType: "application/json"},
		ApplicationProperties: props,
		Data:                  [][]byte{body},
	}
	sctx, cancel := context.WithTimeout(ctx, d.s.answerTimeout)
	defer cancel()
	// The request is settled before its answer, as MQTT's PUBACK comes
	// before the response; both leave in one write.
	if err := dl.AcceptAndSend(sctx, reply, answer); err != nil {
		log.Debug("amqp answer not delivered", "err", err)
		return
	}
	log.Debug("amqp request answered", "opStatus", res.Operation.Status)
}

// operationName names an operation type as the other transports do.
func operationName(op string) string {
	switch op {
	case opRegister:
		return "register"
	case opStatus:
		return "operationStatus"
	}
	return op
}

// correlationID is the id an answer carries: the request's correlation id,
// or its message id when it has none.
func correlationID(m *wire.Message) any {
	if m.Properties.CorrelationID != nil {
		return m.Properties.CorrelationID
	}
	return m.Properties.MessageID
}

// refuse settles a request as rejected, with the DPS error JSON as the
// description (the C# SDK parses it from there) and a condition the Node
// SDK maps to the matching error class; retry-after goes into the info.
func (d *device) refuse(dl *wire.Delivery, err error, log *slog.Logger) {
	e, body := httperr.Body(nil, log, err)
	status := e.Status()
	op, _ := dl.Message.ApplicationProperties[propOperationType].(string)
	d.mu.Lock()
	req := refusal.Request{Transport: d.transport, Operation: operationName(op), IDScope: d.scope,
		RegistrationID: d.regID, RemoteAddr: d.remoteAddr}
	d.mu.Unlock()
	d.s.refusals.Record(context.Background(), req, e, err)
	we := &wire.Error{Condition: condition(status), Description: string(body)}
	if e.RetryAfter > 0 {
		ra := httperr.RetryAfterSeconds(e.RetryAfter)
		we.Info = &wire.Map{Pairs: []wire.Pair{{Key: wire.Symbol(propRetryAfter), Value: ra}, {Key: wire.Symbol(propRetryAfterCS), Value: ra}}}
	}
	if err := dl.Reject(we); err != nil {
		log.Debug("amqp rejection not delivered", "err", err)
	}
}

// condition maps an HTTP status to the AMQP condition the Node SDK turns
// into the error class HTTPS would give (azure-iot-amqp-base
// translateError): 401 UnauthorizedError, 404 DeviceNotFoundError, 429
// ThrottlingError and 5xx InternalServerError, the last two retried.
func condition(status int) wire.Symbol {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return wire.ErrUnauthorized
	case status == http.StatusNotFound:
		return wire.ErrNotFound
	case status == http.StatusTooManyRequests:
		return "com.microsoft:device-container-throttled"
	case status == http.StatusRequestEntityTooLarge:
		return wire.ErrMessageSizeExceeded
	case status >= http.StatusInternalServerError:
		return wire.ErrInternal
	}
	return "com.microsoft:argument-error"
}

// registerPayload extracts the custom payload, a TPM device's keys and the csr from
// a register body, which may be empty (C# without payload, older C SDKs)
// or the DeviceRegistration JSON; its registrationId is ignored in favour
// of the link address.
func registerPayload(body []byte) (json.RawMessage, *dps.TPMAttestation, string, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, nil, "", nil
	}
	if err := jsonlimit.Check(body); err != nil {
		return nil, nil, "", err
	}
	var reg dps.DeviceRegistration
	if err := json.Unmarshal(body, &reg); err != nil {
		return nil, nil, "", err
	}
	if p := bytes.TrimSpace(reg.Payload); len(p) == 0 || bytes.Equal(p, []byte("null")) {
		return nil, reg.TPM, reg.CSR, nil
	}
	return reg.Payload, reg.TPM, reg.CSR, nil
}
