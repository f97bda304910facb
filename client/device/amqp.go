package device

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	goamqp "github.com/Azure/go-amqp"
	"github.com/gorilla/websocket"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
)

// The DPS exchange over AMQP 1.0 (docs/compatibility.md, "AMQP"), as the
// Node and C# SDKs speak it.
const (
	amqpOperationType = "iotdps-operation-type"
	amqpOperationID   = "iotdps-operation-id"
	amqpForceRegister = "iotdps-forceRegistration"
	amqpRegister      = "iotdps-register"
	amqpStatus        = "iotdps-get-operationstatus"
	amqpRetryAfter    = "retry-after"
	amqpAPIVersion    = "com.microsoft:api-version"
	amqpClientVersion = "com.microsoft:client-version"
	amqpSubprotocol   = "AMQPWSB10"
)

type amqpSession struct {
	s    *settings
	conn *goamqp.Conn
	send *goamqp.Sender
	recv *goamqp.Receiver
}

// openAMQP connects (AMQP over TLS on 5671, or over WebSockets on 443),
// authenticates with SASL PLAIN (symmetric key), the TPM mechanism (TPM:
// the challenge is activated during SASL) or not at all (X.509: the TLS
// client certificate), and attaches the receiver and sender links.
func openAMQP(ctx context.Context, s *settings) (*amqpSession, error) {
	tok, err := s.token(time.Now())
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, s.reqTimeout)
	defer cancel()
	nc, err := dialAMQP(cctx, s)
	if err != nil {
		return nil, fmt.Errorf("device: AMQP connect %s: %w", s.RegistrationID, err)
	}
	opts := &goamqp.ConnOptions{HostName: s.host}
	switch {
	case s.TPM != nil:
		// go-amqp has no hook for a mechanism with challenges: the TPM
		// exchange runs on the raw connection first, and go-amqp opens
		// the authenticated connection without SASL.
		if dl, ok := cctx.Deadline(); ok {
			_ = nc.SetDeadline(dl)
		}
		err := wire.ClientSASL(nc, "", &tpmSASL{s: s})
		_ = nc.SetDeadline(time.Time{})
		if err != nil {
			nc.Close()
			return nil, tpmSASLError(s.RegistrationID, err)
		}
	case tok != "":
		opts.SASLType = goamqp.SASLTypePlain(s.resource, tok)
	}
	conn, err := goamqp.NewConn(cctx, nc, opts)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("device: AMQP open %s: %w", s.RegistrationID, err)
	}
	a := &amqpSession{s: s, conn: conn}
	if err := a.attach(cctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("device: AMQP attach %s: %w", s.RegistrationID, err)
	}
	s.progress(Event{Kind: EventConnected})
	return a, nil
}

func (a *amqpSession) attach(ctx context.Context) error {
	sess, err := a.conn.NewSession(ctx, nil)
	if err != nil {
		return err
	}
	props := map[string]any{amqpAPIVersion: a.s.APIVersion, amqpClientVersion: a.s.ClientVersion}
	if a.recv, err = sess.NewReceiver(ctx, a.s.resource, &goamqp.ReceiverOptions{Properties: props, Credit: 1}); err != nil {
		return err
	}
	a.send, err = sess.NewSender(ctx, a.s.resource, &goamqp.SenderOptions{Properties: props})
	return err
}

func dialAMQP(ctx context.Context, s *settings) (net.Conn, error) {
	if s.Transport != TransportAMQPWS {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: s.reqTimeout}, Config: s.tlsConfig}
		return d.DialContext(ctx, "tcp", s.addr(defaultAMQPPort))
	}
	addr := s.addr(defaultHTTPSPort)
	wd := websocket.Dialer{
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:  s.tlsConfig,
		HandshakeTimeout: s.reqTimeout,
		Subprotocols:     []string{amqpSubprotocol},
	}
	u := "wss://" + s.hostPort(defaultHTTPSPort) + websocketPath
	ws, resp, err := wd.DialContext(ctx, u, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("websocket upgrade %s: %s: %w", u, resp.Status, err)
		}
		return nil, fmt.Errorf("websocket upgrade %s: %w", u, err)
	}
	return wsconn.NewConn(ws), nil
}

func (a *amqpSession) register(ctx context.Context, body []byte) (*answer, error) {
	a.s.progress(Event{Kind: EventRegistering})
	m := goamqp.NewMessage(body)
	m.ApplicationProperties = map[string]any{amqpOperationType: amqpRegister, amqpForceRegister: false}
	return a.request(ctx, m)
}

func (a *amqpSession) poll(ctx context.Context, operationID string) (*answer, error) {
	m := goamqp.NewMessage(nil)
	m.ApplicationProperties = map[string]any{amqpOperationType: amqpStatus, amqpOperationID: operationID}
	return a.request(ctx, m)
}

// request sends m and waits for the answer with its correlation id. A
// rejected request is the service's error: its description is the DPS
// error JSON, whose code gives the HTTP-like status.
func (a *amqpSession) request(ctx context.Context, m *goamqp.Message) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, a.s.reqTimeout)
	defer cancel()
	cid := newRID()
	m.Properties = &goamqp.MessageProperties{CorrelationID: cid}
	if err := a.send.Send(ctx, m, nil); err != nil {
		var ae *goamqp.Error
		if errors.As(err, &ae) {
			return rejection(ae), nil
		}
		return nil, fmt.Errorf("send: %w", err)
	}
	for {
		msg, err := a.recv.Receive(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("waiting for the answer: %w", err)
		}
		_ = a.recv.AcceptMessage(ctx, msg)
		if msg.Properties == nil || msg.Properties.CorrelationID != cid {
			continue // a stray or late answer to an earlier request
		}
		ans := &answer{status: 200, body: msg.GetData()}
		if ra, ok := retryAfterProp(msg.ApplicationProperties[amqpRetryAfter]); ok {
			ans.retryAfter, ans.hasRetryAfter = ra, true
			ans.status = 202
		}
		return ans, nil
	}
}

// rejection turns a rejected request into the answer HTTPS would give.
func rejection(e *goamqp.Error) *answer {
	a := &answer{status: 500, body: []byte(e.Description)}
	var body struct {
		ErrorCode int `json:"errorCode"`
	}
	if json.Unmarshal(a.body, &body) == nil && body.ErrorCode >= 100000 {
		a.status = body.ErrorCode / 1000
	}
	if ra, ok := retryAfterProp(e.Info[amqpRetryAfter]); ok {
		a.retryAfter, a.hasRetryAfter = ra, true
	}
	return a
}

// retryAfterProp reads a retry-after property: seconds as a string (what
// dpsd and DPS send) or a number.
func retryAfterProp(v any) (time.Duration, bool) {
	switch v := v.(type) {
	case string:
		return parseRetryAfter(v)
	case int32, int64, uint32, uint64, int:
		n, err := strconv.ParseInt(fmt.Sprint(v), 10, 64)
		if err != nil {
			return 0, false
		}
		return parseRetryAfter(strconv.FormatInt(n, 10))
	}
	return 0, false
}

func (a *amqpSession) close() {
	a.conn.Close()
}
