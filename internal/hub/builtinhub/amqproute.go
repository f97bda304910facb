package builtinhub

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
)

// How an AMQP connection on a shared listener finds its hub. The SDKs
// name it in different places, and a device that dialled an IP address
// (GatewayHostName) sends no TLS server name:
//
//   - the TLS server name, when the device dialled the hub's host name;
//   - the open frame's hostname: the host the device dialled (Node's
//     rhea and the C SDK's uAMQP send the gateway host, an IP address
//     when GatewayHostName is one);
//   - the SASL PLAIN user name {id}@sas.{hubName} (service clients,
//     {policy}@sas.root.{hubName}, as the Event Hubs redirect uses); the
//     Node device SDK sends no SASL at all, the C SDK MSSBCBS, both with
//     nothing in them;
//   - the first $cbs put-token's audience {hubHostName}/devices/{id} (the
//     token's sr): Node signs it for the hub's host name even when it
//     dials GatewayHostName; the C SDK for the gateway host, so an
//     audience that is the shared address is the hub's that has the
//     device and whose key signed the token.
//
// The first three are read when the connection opens: those that name a
// hub must name the same one. The put-token comes before any link of a
// hub (device links need a device's token, service links a service
// token), so the hub is fixed before one attaches; a token for another
// hub than the one fixed is refused.

// amqpSignals is what an AMQP connection said about its hub before its
// first link.
type amqpSignals struct {
	ServerName string // the TLS server name
	Hostname   string // the open frame's hostname, perhaps with a port
	SASLUser   string // the SASL PLAIN user name
}

func signalsOf(c *wire.Conn) amqpSignals {
	s := amqpSignals{ServerName: serverNameOf(c.NetConn()), Hostname: c.Hostname()}
	if _, mech := c.SASL(); mech != nil {
		if p, ok := mech.(*wire.Plain); ok {
			s.SASLUser = p.Username
		}
	}
	return s
}

// serverNameOf is the TLS server name of nc, "" if it is not TLS (AMQP
// over WebSockets: the Host header routed it already).
func serverNameOf(nc net.Conn) string {
	if tc, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return tc.ConnectionState().ServerName
	}
	return ""
}

// saslHubName returns the hub a SASL PLAIN user name {id}@sas.{hubName}
// or {policy}@sas.root.{hubName} names. Device ids may hold '@', so the
// last "@sas." counts.
func saslHubName(user string) (string, bool) {
	i := strings.LastIndex(strings.ToLower(user), "@sas.")
	if i < 0 {
		return "", false
	}
	name := user[i+len("@sas."):]
	if rest, ok := strings.CutPrefix(strings.ToLower(name), "root."); ok {
		name = rest
	}
	return name, name != ""
}

// byName returns the running hub named name, nil if none.
func (m *Manager) byName(name string) *Hub {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hubs[strings.ToLower(name)]
}

// routeAMQP decides the hub of an AMQP connection from s: nil when
// nothing in s names one (a device that dialled an IP address: its
// put-token will), an *wire.Error when s names a hub that does not run
// or two different hubs.
func (m *Manager) routeAMQP(s amqpSignals) (*Hub, error) {
	var (
		hub *Hub
		by  string
	)
	name := func(h *Hub, signal string) error {
		switch {
		case hub == nil:
			hub, by = h, signal
		case hub != h:
			return &wire.Error{Condition: wire.ErrUnauthorized, Description: fmt.Sprintf(
				"the connection names two built-in hubs: %s by its %s and %s by its %s", hub.cfg.HostName, by, h.cfg.HostName, signal)}
		}
		return nil
	}
	if h := m.byHost(s.ServerName); h != nil {
		_ = name(h, "TLS server name")
	}
	if h := m.byHost(hostOnly(s.Hostname)); h != nil {
		if err := name(h, "open frame's hostname"); err != nil {
			return nil, err
		}
	}
	if n, ok := saslHubName(s.SASLUser); ok {
		h := m.byName(n)
		if h == nil {
			h = m.byHost(n)
		}
		if h == nil {
			return nil, &wire.Error{Condition: wire.ErrNotFound, Description: fmt.Sprintf(
				"the SASL user name %q names hub %q, which is no built-in hub here", s.SASLUser, n)}
		}
		if err := name(h, "SASL user name"); err != nil {
			return nil, err
		}
	}
	return hub, nil
}

// newAMQPLinks returns the link handler of an AMQP connection to hub h
// (nil until a put-token names it), with the Event Hubs-compatible
// endpoint layered on.
func (m *Manager) newAMQPLinks(c *wire.Conn, h *Hub) wire.LinkHandler {
	base := &amqpLinks{m: m, h: h, conn: c, devices: map[string]time.Time{}}
	return m.wrapEventHub(c, base, m.log.With("component", "hub-eventhub"))
}

// ClaimAMQP offers the built-in hubs an AMQP connection (over TLS or
// WebSockets) that the provisioning service's listener took because its
// TLS server name or Host header named no hub: a device that dialled the
// node's address. It returns the connection's link handler and whether
// the connection named a hub (its open frame's hostname or SASL user
// name); one that named none gets a handler all the same, whose hub the
// first put-token names, for the caller to use if the connection's links
// are not the caller's. A nil handler means no hub runs. An error (an
// *amqp.Error) is why the connection is refused: it names a hub that
// does not run, or two hubs.
func (m *Manager) ClaimAMQP(c *wire.Conn) (wire.LinkHandler, bool, error) {
	if m == nil || m.front == nil || !m.Running() {
		return nil, false, nil
	}
	h, err := m.routeAMQP(signalsOf(c))
	if err != nil {
		m.log.Info("hub amqp connection refused", "remote", c.NetConn().RemoteAddr().String(), "err", err)
		return nil, false, err
	}
	return m.newAMQPLinks(c, h), h != nil, nil
}

// hubOfToken finds the hub of a device token whose audience host is no
// hub's host name but the shared address (as the C SDK signs it when
// GatewayHostName is an IP address): the one hub on that address that
// has the device and whose key verifies the token. Two such hubs are
// ambiguous: the device must then name its hub.
func (m *Manager) hubOfToken(ctx context.Context, host, id, token string) (*Hub, error) {
	m.mu.Lock()
	hubs := make([]*Hub, 0, len(m.hubs))
	for _, h := range m.hubs {
		if h.shared != nil && (h.isAlias(host) || h.isAlias(hostOnly(host))) {
			hubs = append(hubs, h)
		}
	}
	m.mu.Unlock()
	// In name order, so that a refusal names the two hubs the same way
	// every time rather than in the map's order.
	slices.SortFunc(hubs, func(a, b *Hub) int { return strings.Compare(a.cfg.Name, b.cfg.Name) })
	var found *Hub
	for _, h := range hubs {
		d, err := h.loadTwin(ctx, id)
		if err != nil || h.checkDeviceToken(d, token) != nil {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("device %s of hubs %s and %s signed a token for %s: name the hub (its host name as HostName, without GatewayHostName, or in the token)", id, found.cfg.Name, h.cfg.Name, host)
		}
		found = h
	}
	if found == nil {
		return nil, fmt.Errorf("no built-in hub is named %q, and none on that address has device %s with the token's key", host, id)
	}
	return found, nil
}
