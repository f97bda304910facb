package builtinhub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/sas"
)

// The hub's AMQP endpoint, as the Azure service SDKs use it: claims-based
// security ($cbs put-token with a policy's SAS token), cloud-to-device
// sends on /messages/devicebound, and the feedback link
// /messages/serviceBound/feedback, on which delivery outcomes go out as
// the messages' ack asks. Device links are not served over AMQP yet.
const (
	amqpCBS      = "$cbs"
	amqpC2D      = "/messages/devicebound"
	amqpFeedback = "/messages/serviceBound/feedback"
	cbsPutToken  = "put-token"
)

// newAMQPServer returns the AMQP server of the shared endpoint.
func (m *Manager) newAMQPServer() *wire.Server {
	return wire.NewServer(wire.Options{
		Handler: amqpHandler{m},
		SASL: []wire.SASLServer{
			{Name: "ANONYMOUS", New: func(string) wire.SASLMechanism { return &wire.Anonymous{} }},
		},
		AllowNoSASL:      true,
		ContainerID:      "dpsd-hub",
		HandshakeTimeout: m.opt.ConnectTimeout,
		Logger:           m.log.With("component", "hub-amqp"),
	})
}

// serveAMQP finishes the TLS handshake of an AMQP connection and serves it.
func (f *front) serveAMQP(c net.Conn) {
	tc := tls.Server(c, f.tls)
	_ = f.m.amqp.ServeConn(f.ctx, tc)
}

type amqpHandler struct{ m *Manager }

// Open finds the hub by the TLS server name, or the open frame's hostname.
func (a amqpHandler) Open(c *wire.Conn) (wire.LinkHandler, error) {
	var h *Hub
	if tc, ok := c.NetConn().(*tls.Conn); ok {
		h = a.m.byHost(tc.ConnectionState().ServerName)
	}
	if h == nil {
		h = a.m.byHost(hostOnly(c.Hostname()))
	}
	if h == nil {
		return nil, &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("no built-in hub is named %q", c.Hostname())}
	}
	return &amqpLinks{h: h, conn: c}, nil
}

// amqpLinks is one AMQP connection to a hub: what its tokens allow, and
// its $cbs reply link.
type amqpLinks struct {
	h    *Hub
	conn *wire.Conn

	mu      sync.Mutex
	cbsOut  *wire.Link
	service time.Time    // a service token's expiry, zero if none
	fbLinks []*wire.Link // feedback links, removed from the hub at Close
}

func (a *amqpLinks) Attach(l *wire.Link) error {
	switch {
	case l.Address == amqpCBS:
		if !l.PeerIsSender {
			a.mu.Lock()
			a.cbsOut = l
			a.mu.Unlock()
		}
		return nil
	case l.Address == amqpC2D && l.PeerIsSender, l.Address == amqpFeedback && !l.PeerIsSender:
		if !a.authorized() {
			return &wire.Error{Condition: "amqp:unauthorized-access", Description: "put a service token on $cbs first"}
		}
		if l.Address == amqpFeedback {
			a.mu.Lock()
			a.fbLinks = append(a.fbLinks, l)
			a.mu.Unlock()
			a.h.addFeedbackLink(l)
		}
		return nil
	}
	return &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("no such node %q on a built-in hub", l.Address)}
}

func (a *amqpLinks) authorized() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.h.now().Before(a.service)
}

func (a *amqpLinks) Message(ctx context.Context, d *wire.Delivery) {
	switch d.Link.Address {
	case amqpCBS:
		a.putToken(ctx, d)
	case amqpC2D:
		a.sendC2D(ctx, d)
	default:
		_ = d.Reject(&wire.Error{Condition: "amqp:not-allowed", Description: "this link takes no messages"})
	}
}

// putToken answers a $cbs put-token request on the reply link: 200 when
// the token is a valid service token of a policy with ServiceConnect, 401
// otherwise.
func (a *amqpLinks) putToken(ctx context.Context, d *wire.Delivery) {
	m := d.Message
	status, desc := 200, "OK"
	op, _ := m.ApplicationProperties["operation"].(string)
	tokStr := string(m.Body())
	if op != cbsPutToken {
		status, desc = 400, "unsupported operation "+op
	} else if exp, err := a.h.checkServiceToken(tokStr, RightServiceConnect); err != nil {
		status, desc = 401, err.Error()
	} else {
		a.mu.Lock()
		a.service = exp
		a.mu.Unlock()
	}
	_ = d.Accept()
	a.mu.Lock()
	out := a.cbsOut
	a.mu.Unlock()
	if out == nil {
		return
	}
	reply := &wire.Message{
		Properties:            wire.Properties{CorrelationID: m.Properties.MessageID, To: m.Properties.ReplyTo},
		ApplicationProperties: map[string]any{"status-code": int32(status), "status-description": desc},
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := out.Send(sctx, reply); err != nil {
		a.h.log.Debug("cbs reply failed", "err", err)
	}
}

// sendC2D queues a message the service sent to /messages/devicebound,
// addressed by its "to" property: /devices/{id}/messages/devicebound.
func (a *amqpLinks) sendC2D(ctx context.Context, d *wire.Delivery) {
	m := d.Message
	if !a.authorized() {
		_ = d.Reject(&wire.Error{Condition: "amqp:unauthorized-access", Description: "the service token expired"})
		return
	}
	rest, ok := strings.CutPrefix(m.Properties.To, "/devices/")
	id, tail, _ := strings.Cut(rest, "/")
	if !ok || id == "" || !strings.EqualFold(tail, "messages/devicebound") {
		_ = d.Reject(&wire.Error{Condition: "amqp:invalid-field", Description: fmt.Sprintf("the message is to %q, not /devices/{id}/messages/devicebound", m.Properties.To)})
		return
	}
	if u, err := url.PathUnescape(id); err == nil {
		id = u
	}
	msg := &C2DMessage{Body: m.Body(), Properties: map[string]string{}}
	msg.MessageID = anyString(m.Properties.MessageID)
	msg.CorrelationID = anyString(m.Properties.CorrelationID)
	msg.ContentType = string(m.Properties.ContentType)
	for k, v := range m.ApplicationProperties {
		if k == "iothub-ack" {
			msg.Ack = anyString(v)
			continue
		}
		msg.Properties[k] = anyString(v)
	}
	if err := a.h.SendC2D(ctx, id, msg); err != nil {
		cond, desc := wire.Symbol("amqp:internal-error"), "internal error"
		var he *azurehub.Error
		if errors.As(err, &he) {
			desc = he.Message
			switch he.StatusCode {
			case http.StatusNotFound:
				cond = "amqp:not-found"
			case http.StatusForbidden, http.StatusRequestEntityTooLarge:
				cond = "amqp:resource-limit-exceeded"
			}
		}
		_ = d.Reject(&wire.Error{Condition: cond, Description: desc})
		return
	}
	_ = d.Accept()
}

func (a *amqpLinks) Detach(l *wire.Link) {
	a.h.removeFeedbackLink(l)
	a.mu.Lock()
	if a.cbsOut == l {
		a.cbsOut = nil
	}
	a.mu.Unlock()
}

func (a *amqpLinks) Close(error) {
	a.mu.Lock()
	links := a.fbLinks
	a.fbLinks = nil
	a.mu.Unlock()
	for _, l := range links {
		a.h.removeFeedbackLink(l)
	}
}

func anyString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case wire.Symbol:
		return string(x)
	case []byte:
		return string(x)
	}
	return fmt.Sprint(v)
}

// checkServiceToken checks a service SAS token for the hub (its resource
// one of the hub's names) signed by a policy with right need, and returns
// its expiry.
func (h *Hub) checkServiceToken(s string, need Right) (time.Time, error) {
	tok, err := sas.Parse(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	if tok.ExpiredAt(h.now()) {
		return time.Time{}, errors.New("the SharedAccessSignature has expired")
	}
	pol, ok := h.cfg.policy(tok.KeyName)
	if !ok {
		return time.Time{}, fmt.Errorf("unknown shared access policy %q", tok.KeyName)
	}
	if tok.VerifyAny(decodeKey(pol.PrimaryKey), decodeKey(pol.SecondaryKey)) < 0 {
		return time.Time{}, errors.New("the SharedAccessSignature does not verify")
	}
	res, err := tok.DecodedResource()
	if err != nil || !h.audienceOK(res, "/messages/devicebound") {
		return time.Time{}, fmt.Errorf("the SharedAccessSignature is for %q, not this hub", tok.Resource)
	}
	if !pol.has(need) {
		return time.Time{}, fmt.Errorf("policy %q lacks the %s right", pol.KeyName, need)
	}
	return time.Unix(tok.Expiry, 0), nil
}
