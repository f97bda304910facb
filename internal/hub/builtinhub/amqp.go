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
	"github.com/dpsd/dpsd/internal/connlimit"
	"github.com/dpsd/dpsd/internal/eventhub"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
)

// The hub's AMQP endpoint, as the Azure SDKs use it: claims-based
// security ($cbs put-token with a policy's SAS token for services, a
// device's for devices); for services cloud-to-device sends on
// /messages/devicebound and the feedback link
// /messages/serviceBound/feedback, on which delivery outcomes go out as
// the messages' ack asks; for devices telemetry on
// /devices/{id}/messages/events and cloud-to-device messages on
// /devices/{id}/messages/devicebound (each settled by the device's
// disposition); twins and methods on the device links of amqpdevice.go.
const (
	amqpCBS      = "$cbs"
	amqpC2D      = "/messages/devicebound"
	amqpFeedback = "/messages/serviceBound/feedback"
	cbsPutToken  = "put-token"
)

// newAMQPServer returns the AMQP server of the shared endpoint (pinned
// nil), whose connections are told apart by the names they use, or of the
// listeners of hub pinned alone, whose connections are all its own.
func (m *Manager) newAMQPServer(pinned *Hub) *wire.Server {
	log := m.log
	if pinned != nil {
		log = pinned.log
	}
	return wire.NewServer(wire.Options{
		Handler: amqpHandler{m: m, pinned: pinned},
		SASL: []wire.SASLServer{
			{Name: "ANONYMOUS", New: func(string) wire.SASLMechanism { return &wire.Anonymous{} }},
			// A service token as the password (user {policy}@sas.root.{hub}),
			// checked when a link needs it: the way to ask the hub for its
			// Event Hubs-compatible endpoint (package eventhub's redirect).
			wire.PlainServer(nil),
			// The C SDK's: its token goes to $cbs as well.
			wire.CBSServer(),
		},
		AllowNoSASL:      true,
		MaxSessions:      m.AMQPMaxSessions(),
		ContainerID:      "dpsd-hub",
		HandshakeTimeout: m.opt.ConnectTimeout,
		Logger:           log.With("component", "hub-amqp"),
	})
}

// AMQPMaxSessions is the number of sessions an AMQP connection to the
// hubs may need: an Event Hubs consumer opens one per partition besides
// those of $cbs and $management. A listener shared with the hubs
// allows as many.
func (m *Manager) AMQPMaxSessions() int {
	if m == nil {
		return 0
	}
	return m.eventHubPartitions() + 4
}

// serveAMQP finishes the TLS handshake of an AMQP connection and serves it.
func (f *front) serveAMQP(c net.Conn) {
	tc := tls.Server(c, f.tls)
	_ = f.m.amqp.ServeConn(f.ctx, tc)
}

// acceptAMQP serves the connections of the hub's own AMQP listener until
// it is closed.
func (h *Hub) acceptAMQP() {
	for {
		c, err := connlimit.Accept(h.amqpL, h.log, "hub amqp")
		if err != nil {
			return
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			// The handshake runs on the first read, under the server's
			// handshake timeout.
			_ = h.amqp.ServeConn(h.amqpCtx, tls.Server(c, h.tls))
		}()
	}
}

// serveAMQPWebSocket serves AMQP over WebSockets on the hub's own HTTPS
// listener when r asks for it (any path: /$iothub/websocket for devices
// and services, /$servicebus/websocket for Event Hubs clients) and
// reports whether it did.
func (h *Hub) serveAMQPWebSocket(w http.ResponseWriter, r *http.Request) bool {
	if h.amqp == nil || !wsconn.IsUpgrade(r) || !wsconn.Offers(r, amqpWebSocketSubprotocol) {
		return false
	}
	if !h.enter() {
		http.Error(w, "the hub is stopping", http.StatusServiceUnavailable)
		return true
	}
	defer h.wg.Done()
	c, err := wsconn.UpgradeSubprotocol(w, r, amqpWebSocketSubprotocol)
	if err != nil {
		return true // answered
	}
	_ = h.amqp.ServeConn(h.amqpCtx, c)
	return true
}

// amqpHandler opens the AMQP connections of the shared endpoint or, when
// pinned is set, of that hub's own listeners.
type amqpHandler struct {
	m      *Manager
	pinned *Hub
}

// Open finds the hub: the pinned one, whose own listeners the connection
// came in on, or by what the connection carries (routeAMQP): the TLS
// server name, the open frame's hostname, the SASL user name; with none
// (a device that dialled an IP address) the first put-token names it.
func (a amqpHandler) Open(c *wire.Conn) (wire.LinkHandler, error) {
	if h := a.pinned; h != nil {
		base := &amqpLinks{m: a.m, h: h, conn: c, devices: map[string]time.Time{}}
		return eventhub.Wrap(c, base, h.eventHubResolver, h.amqpPort(), h.log.With("component", "hub-eventhub")), nil
	}
	h, err := a.m.routeAMQP(signalsOf(c))
	if err != nil {
		return nil, err
	}
	return a.m.newAMQPLinks(c, h), nil
}

// amqpLinks is one AMQP connection to a hub: what its tokens allow, and
// its $cbs reply link.
type amqpLinks struct {
	m    *Manager
	h    *Hub // nil until known; set once
	conn *wire.Conn

	mu      sync.Mutex
	cbsOut  *wire.Link
	service time.Time            // a service token's expiry, zero if none
	devices map[string]time.Time // devices' token expiries, by lower-cased id
	fbLinks []*wire.Link         // feedback links, removed from the hub at Close
	c2d     []amqpC2DLink        // devices' cloud-to-device links, likewise
}

type amqpC2DLink struct {
	id   string
	link *wire.Link
}

// hub returns the connection's hub, nil until known.
func (a *amqpLinks) hub() *Hub {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.h
}

// deviceAuthorized reports whether a device token for id is in force.
func (a *amqpLinks) deviceAuthorized(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.h != nil && a.h.now().Before(a.devices[strings.ToLower(id)])
}

// deviceLink parses /devices/{id}/messages/{kind}, or a module's
// /devices/{id}/modules/{moduleId}/messages/{kind}, whose id it returns as
// "{id}/{moduleId}".
func deviceLink(addr string) (id, kind string, ok bool) {
	rest, ok := strings.CutPrefix(nodePath(addr), "/devices/")
	if !ok {
		return "", "", false
	}
	id, tail, ok := strings.Cut(rest, "/messages/")
	if !ok || id == "" {
		return "", "", false
	}
	dev, mod, isModule := strings.Cut(id, "/modules/")
	if u, err := url.PathUnescape(dev); err == nil {
		dev = u
	}
	if !isModule {
		if strings.Contains(dev, "/") {
			return "", "", false // device ids hold no '/'
		}
		return dev, strings.ToLower(tail), true
	}
	if u, err := url.PathUnescape(mod); err == nil {
		mod = u
	}
	if dev == "" || mod == "" || strings.Contains(dev, "/") || strings.Contains(mod, "/") {
		return "", "", false
	}
	return dev + "/" + mod, strings.ToLower(tail), true
}

func (a *amqpLinks) Attach(l *wire.Link) error {
	if _, rest, ok := strings.Cut(l.Address, "://"); ok {
		// The C and C# SDKs put the host they dialled in front
		// (nodePath): a gateway's name or address, or a hub's host
		// name, which must then be the connection's hub's.
		host, _, _ := strings.Cut(rest, "/")
		if h, other := a.hub(), a.m.byHost(hostOnly(host)); h != nil && other != nil && other != h {
			return &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("the link address %q names hub %s, but this connection is hub %s's", l.Address, other.cfg.HostName, h.cfg.HostName)}
		}
	}
	switch {
	case l.Address == amqpCBS:
		if !l.PeerIsSender {
			a.mu.Lock()
			a.cbsOut = l
			a.mu.Unlock()
		}
		return nil
	case strings.HasPrefix(nodePath(l.Address), "/devices/"):
		if id, _, ok := deviceNode(l.Address); ok {
			if !a.deviceAuthorized(id) {
				return &wire.Error{Condition: "amqp:unauthorized-access", Description: "put a token of device " + id + " on $cbs first"}
			}
			a.hub().attachDeviceNode(l)
			return nil
		}
		id, kind, ok := deviceLink(l.Address)
		switch {
		case !ok || !(kind == "events" && l.PeerIsSender || kind == "devicebound" && !l.PeerIsSender && !strings.Contains(id, "/")):
			return &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("no such node %q on a built-in hub", l.Address)}
		case !a.deviceAuthorized(id):
			return &wire.Error{Condition: "amqp:unauthorized-access", Description: "put a token of device " + id + " on $cbs first"}
		}
		if kind == "devicebound" {
			a.mu.Lock()
			a.c2d = append(a.c2d, amqpC2DLink{id: id, link: l})
			a.mu.Unlock()
			a.hub().addAMQPC2D(id, l)
		}
		return nil
	case a.hub() == nil:
		return &wire.Error{Condition: "amqp:not-found", Description: "no built-in hub is named by this connection: open it with the hub's host name or put a token on $cbs first"}
	case l.Address == amqpC2D && l.PeerIsSender, l.Address == amqpFeedback && !l.PeerIsSender:
		if !a.authorized() {
			return &wire.Error{Condition: "amqp:unauthorized-access", Description: "put a service token on $cbs first"}
		}
		if l.Address == amqpFeedback {
			a.mu.Lock()
			a.fbLinks = append(a.fbLinks, l)
			a.mu.Unlock()
			a.hub().addFeedbackLink(l)
		}
		return nil
	}
	return &wire.Error{Condition: "amqp:not-found", Description: fmt.Sprintf("no such node %q on a built-in hub", l.Address)}
}

func (a *amqpLinks) authorized() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.h != nil && a.h.now().Before(a.service)
}

func (a *amqpLinks) Message(ctx context.Context, d *wire.Delivery) {
	switch {
	case d.Link.Address == amqpCBS:
		a.putToken(ctx, d)
	case d.Link.Address == amqpC2D:
		a.sendC2D(ctx, d)
	case strings.HasPrefix(nodePath(d.Link.Address), "/devices/"):
		if id, _, ok := deviceNode(d.Link.Address); ok {
			if !a.deviceAuthorized(id) {
				_ = d.Reject(&wire.Error{Condition: "amqp:unauthorized-access", Description: "the device token expired"})
				return
			}
			a.hub().deviceNodeMessage(ctx, d)
			return
		}
		a.telemetry(d)
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
	} else if err := a.authorize(ctx, tokStr); err != nil {
		status, desc = 401, err.Error()
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
		a.m.log.Debug("cbs reply failed", "err", err)
	}
}

// authorize takes a put-token's token: a device's (sr {host}/devices/{id},
// signed with its key) or a service policy's. The first token that
// verifies names the hub of a connection that did not; later ones must be
// for the same hub.
func (a *amqpLinks) authorize(ctx context.Context, s string) error {
	tok, err := sas.Parse(s)
	if err != nil {
		return fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	res, err := tok.DecodedResource()
	if err != nil {
		return fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	host, path, _ := strings.Cut(res, "/")
	id, isDevice := strings.CutPrefix(path, "devices/")
	isDevice = isDevice && tok.KeyName == ""
	id = strings.TrimSuffix(id, "/")
	// A module's token is for devices/{id}/modules/{moduleId}.
	dev, mod, isModule := strings.Cut(id, "/modules/")
	if isModule {
		id = dev + "/" + mod
	}
	if isDevice && strings.Contains(dev, "/") {
		return fmt.Errorf("token resource %q is neither a device nor a module", res)
	}
	named := a.m.byHost(hostOnly(host))
	h := a.hub()
	switch {
	case h != nil && named != nil && named != h:
		return errOtherHub(named, h)
	case h == nil && named != nil:
		h = named
	case h == nil && isDevice:
		// No hub's host name: the shared address, as the C SDK signs
		// its token when it dials an IP address.
		if h, err = a.m.hubOfToken(ctx, host, id, s); err != nil {
			return err
		}
	case h == nil:
		return fmt.Errorf("no built-in hub is named %q", host)
	}
	var exp time.Time
	if isDevice {
		d, err := h.load(ctx, dev)
		if err != nil {
			return fmt.Errorf("device %s: %v", dev, err)
		}
		if d.Status != azurehub.StatusEnabled {
			return fmt.Errorf("device %s is disabled", dev)
		}
		if isModule {
			if d, err = h.loadTwin(ctx, id); err != nil {
				return fmt.Errorf("module %s: %v", id, err)
			}
		}
		if err := h.checkDeviceToken(d, s); err != nil {
			return err
		}
		exp = time.Unix(tok.Expiry, 0)
	} else if exp, err = h.checkServiceToken(s, RightServiceConnect); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.h == nil {
		a.h = h
	} else if a.h != h {
		return errOtherHub(h, a.h)
	}
	if isDevice {
		a.devices[strings.ToLower(id)] = exp
	} else {
		a.service = exp
	}
	return nil
}

// errOtherHub refuses a token for hub other on a connection of hub h.
func errOtherHub(other, h *Hub) error {
	return fmt.Errorf("the token is for hub %s, but this connection is hub %s's: open one connection per hub", other.cfg.HostName, h.cfg.HostName)
}

// telemetry keeps a message a device sent on /devices/{id}/messages/events.
func (a *amqpLinks) telemetry(d *wire.Delivery) {
	id, _, _ := deviceLink(d.Link.Address)
	h := a.hub()
	if h == nil || !a.deviceAuthorized(id) {
		_ = d.Reject(&wire.Error{Condition: "amqp:unauthorized-access", Description: "the device token expired"})
		return
	}
	m := d.Message
	props := map[string]string{}
	if v := wire.Text(m.Properties.MessageID); v != "" {
		props["iothub-messageid"] = v
	}
	if v := wire.Text(m.Properties.CorrelationID); v != "" {
		props["iothub-correlationid"] = v
	}
	if m.Properties.ContentType != "" {
		props["iothub-contenttype"] = string(m.Properties.ContentType)
	}
	for k, v := range m.ApplicationProperties {
		props["iothub-app-"+k] = wire.Text(v)
	}
	if err := h.keepTelemetry(h.httpMessage(id, props, m.Body())); err != nil {
		// Not accepted: the device's SDK sends it again.
		_ = d.Reject(&wire.Error{Condition: "amqp:internal-error", Description: "the message could not be stored: " + err.Error()})
		return
	}
	h.touch(id)
	_ = d.Accept()
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
	msg.MessageID = wire.Text(m.Properties.MessageID)
	msg.CorrelationID = wire.Text(m.Properties.CorrelationID)
	msg.ContentType = string(m.Properties.ContentType)
	for k, v := range m.ApplicationProperties {
		if k == "iothub-ack" {
			msg.Ack = wire.Text(v)
			continue
		}
		msg.Properties[k] = wire.Text(v)
	}
	if err := a.hub().SendC2D(ctx, id, msg); err != nil {
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
	if h := a.hub(); h != nil {
		h.removeFeedbackLink(l)
		h.detachDeviceNode(l)
		if id, kind, ok := deviceLink(l.Address); ok && kind == "devicebound" {
			h.removeAMQPC2D(id, l)
		}
	}
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
	c2d := a.c2d
	a.c2d = nil
	h := a.h
	a.mu.Unlock()
	if h == nil {
		return
	}
	for _, l := range links {
		h.removeFeedbackLink(l)
	}
	for _, c := range c2d {
		h.removeAMQPC2D(c.id, c.link)
	}
}

// checkServiceToken checks a service SAS token for the hub (its resource
// one of the hub's names) signed by a policy with right need, and returns
// its expiry.
func (h *Hub) checkServiceToken(s string, need Right) (time.Time, error) {
	tok, pol, err := h.policyToken(s, false)
	if err != nil {
		return time.Time{}, err
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

// policyToken parses a SAS token, checks that it has not expired and that
// one of the keys of the hub policy it names signed it, and returns both.
// keyText also takes a signature made with the key's base64 text rather
// than its bytes, as Event Hubs clients sign (Service Bus's convention).
func (h *Hub) policyToken(s string, keyText bool) (*sas.Token, *Policy, error) {
	tok, err := sas.Parse(s)
	if err != nil {
		return nil, nil, fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	if tok.ExpiredAt(h.now()) {
		return nil, nil, errors.New("the SharedAccessSignature has expired")
	}
	pol, ok := h.cfg.policy(tok.KeyName)
	if !ok {
		return nil, nil, fmt.Errorf("unknown shared access policy %q", tok.KeyName)
	}
	keys := [][]byte{decodeKey(pol.PrimaryKey), decodeKey(pol.SecondaryKey)}
	if keyText {
		keys = append([][]byte{[]byte(pol.PrimaryKey), []byte(pol.SecondaryKey)}, keys...)
	}
	if tok.VerifyAny(keys...) < 0 {
		return nil, nil, errors.New("the SharedAccessSignature does not verify")
	}
	return tok, pol, nil
}
