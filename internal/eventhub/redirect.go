package eventhub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/sas"
)

// IoT Hub answers a receiver on its own messages/events node (the way
// the Azure samples and SDK test helpers turn an IoT hub connection string
// into an Event Hubs one) with amqp:link:redirect, whose info names the
// endpoint: hostname, network-host, port and address
// amqps://HOST:PORT/NAME/$management. The client authenticates with SASL
// PLAIN: user {policy}@sas.root.{hub}, password a service token for
// {host}/messages/events.

const condRedirect = "amqp:link:redirect"

// isRedirectAddress reports whether addr is the hub's messages/events
// node: messages/events[/…], with or without amqps://HOST in front.
func isRedirectAddress(addr string) bool {
	a := strings.ToLower(addr)
	if rest, ok := strings.CutPrefix(a, "amqps://"); ok {
		_, a, _ = strings.Cut(rest, "/")
	}
	a = strings.TrimPrefix(a, "/")
	return a == "messages/events" || strings.HasPrefix(a, "messages/events/")
}

// redirect answers a receiver on messages/events with the redirect to the
// endpoint, once its credentials check out, or with why not. The link
// opens and is detached with the answer once the receiver grants credit,
// which it does only after it saw the attach: detached at once, in the
// same read as the attach, the error would reach a client (rhea-promise,
// as the samples use it) before it listens for it.
func (l *links) redirect(k *wire.Link) error {
	if k.PeerIsSender {
		return &wire.Error{Condition: "amqp:not-allowed", Description: "messages/events is read through the Event Hubs-compatible endpoint"}
	}
	e := l.redirectAnswer()
	ctx, cancel := context.WithTimeout(l.conn.Context(), redirectWait)
	go func() {
		defer cancel()
		if err := k.WaitCredit(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
			_ = k.Detach(e)
		}
	}()
	return nil
}

// redirectAnswer is the error a messages/events receiver is detached with.
func (l *links) redirectAnswer() *wire.Error {
	host := l.conn.Hostname()
	src := l.resolve(host, "")
	if src == nil {
		// A client that dialled an address names its hub in its SASL
		// user name alone: {policy}@sas.root.{hub}.
		if name := rootHub(l.conn); name != "" {
			src = l.resolve("", name)
		}
	}
	if src == nil {
		return &wire.Error{Condition: "amqp:not-found", Description: "no built-in hub is named by this connection: open it with the hub's host name, or sign in as POLICY@sas.root.HUB"}
	}
	if err := l.redirectAuthorized(src); err != nil {
		return &wire.Error{Condition: "amqp:unauthorized-access", Description: err.Error()}
	}
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	port := l.amqpPort
	if tcp, ok := l.conn.NetConn().LocalAddr().(*net.TCPAddr); ok && port == 0 {
		port = tcp.Port
	}
	if port == 0 {
		port = 5671
	}
	info := &wire.Map{}
	info.Set(wire.Symbol("hostname"), h)
	info.Set(wire.Symbol("network-host"), h)
	info.Set(wire.Symbol("port"), int32(port))
	info.Set(wire.Symbol("address"), fmt.Sprintf("amqps://%s/%s/$management", net.JoinHostPort(h, strconv.Itoa(port)), src.Name()))
	return &wire.Error{Condition: condRedirect, Description: "the hub's telemetry is read from its Event Hubs-compatible endpoint", Info: info}
}

// rootHub is the hub of a connection's SASL PLAIN user
// {policy}@sas.root.{hub}, "" if it has none.
func rootHub(c *wire.Conn) string {
	_, mech := c.SASL()
	p, ok := mech.(*wire.Plain)
	if !ok {
		return ""
	}
	i := strings.LastIndex(strings.ToLower(p.Username), "@sas.root.")
	if i < 0 {
		return ""
	}
	return p.Username[i+len("@sas.root."):]
}

// redirectWait bounds the wait for a redirected receiver's credit.
const redirectWait = 30 * time.Second

// redirectAuthorized checks the connection's SASL PLAIN token (or a token
// put for the endpoint) for src.
func (l *links) redirectAuthorized(src Source) error {
	if l.authorized(src) {
		return nil
	}
	name, mech := l.conn.SASL()
	p, ok := mech.(*wire.Plain)
	if name != "PLAIN" || !ok {
		return fmt.Errorf("sign in with SASL PLAIN (user POLICY@sas.root.%s, password a service SharedAccessSignature) or put a token on $cbs first", src.Name())
	}
	tok, err := sas.Parse(p.Password)
	if err != nil {
		return fmt.Errorf("the SASL PLAIN password is not a SharedAccessSignature: %w", err)
	}
	res, err := tok.DecodedResource()
	if err != nil {
		return fmt.Errorf("malformed SharedAccessSignature: %w", err)
	}
	resHost, _, _ := strings.Cut(res, "/")
	if other := l.resolve(resHost, ""); other == nil || !strings.EqualFold(other.Name(), src.Name()) {
		return fmt.Errorf("the SharedAccessSignature is for %q, not hub %s", res, src.Name())
	}
	if user, _, _ := strings.Cut(p.Username, "@"); tok.KeyName != "" && user != "" && !strings.EqualFold(user, tok.KeyName) {
		return fmt.Errorf("the SASL user %q and the token's policy %q differ", p.Username, tok.KeyName)
	}
	_, err = src.CheckToken(p.Password)
	return err
}
