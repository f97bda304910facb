package mqtt

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"strconv"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/internal/deadline"
	"github.com/dpsd/dpsd/internal/mqtt311"
)

// session is one accepted device connection.
type session struct {
	cl         *mqtt.Client
	user       username
	sasToken   string
	peerCerts  []*x509.Certificate
	remoteAddr string
	transport  string
	log        *slog.Logger
	conn       *deadline.Conn

	// ctx ends when the device disconnects or the server gives up on
	// shutdown, like an HTTP request's context.
	ctx    context.Context
	cancel context.CancelFunc
	// slots bounds the requests this connection has in the engine.
	slots chan struct{}
	// answered is set once a request got a success answer: until then
	// the device has proved nothing, and a refusal ends the connection.
	answered atomic.Bool
}

// hook adapts the broker to DPS. The broker calls it from each connection's
// read loop, so nothing here may wait for the engine.
type hook struct {
	mqtt.HookBase
	s *Server
}

func (h *hook) ID() string { return "dps" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnSubscribe,
		mqtt.OnPublish,
		mqtt.OnPublished,
		mqtt.OnDisconnect,
		mqtt.OnPacketEncode,
	}, []byte{b})
}

// OnPacketEncode answers MQTT 3.1.1 clients in 3.1.1 (mqtt311.Encode): the
// broker would send them MQTT 5 CONNACK codes and DISCONNECT packets.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return mqtt311.Encode(cl, pk)
}

// OnConnect runs after the broker has parsed a valid CONNECT and before it
// answers. It reshapes the client into a DPS session.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := h.s
	if pk.ProtocolVersion > 4 {
		// DPS speaks MQTT 3.1.1 only.
		_ = s.broker.SendConnack(cl, packets.ErrUnsupportedProtocolVersion, false, nil)
		return packets.ErrUnsupportedProtocolVersion
	}

	// DPS has no sessions, retained state or wills. A unique broker id per
	// connection means the broker never takes a session over or restores
	// one (so SessionPresent is always 0, as C# requires) and two
	// connections of one device cannot disturb each other; Clean makes the
	// broker forget the client when it disconnects, whatever the device
	// asked for (Python asks for clean=false).
	clientID := pk.Connect.ClientIdentifier
	cl.ID = clientID + "#" + strconv.FormatUint(s.connSeq.Add(1), 10)
	cl.Properties.Clean = true
	// A will would be published through the broker to whoever subscribes to
	// its topic, which is exactly what a DPS server must never do.
	cl.Properties.Will = mqtt.Will{}

	s.mu.Lock()
	cs := s.active[cl.Net.Conn]
	s.mu.Unlock()
	if cs == nil {
		// Not a connection this server accepted; refuse it.
		return nil
	}
	log := s.log.With("transport", cs.transport, "remote", cs.remoteAddr)

	if !pk.Connect.UsernameFlag {
		log.Info("mqtt connect refused: no user name")
		return nil
	}
	u, err := parseUsername(string(pk.Connect.Username))
	if err != nil {
		log.Info("mqtt connect refused: malformed user name", "username", string(pk.Connect.Username), "err", err)
		return nil
	}
	log = log.With("idScope", u.IDScope, "registrationId", u.RegistrationID)
	if clientID != u.RegistrationID {
		// Azure SDKs send the registration id as client id; the user
		// name is what counts, so a mismatch is only worth a note.
		log.Debug("mqtt client id differs from registration id", "clientId", clientID)
	}

	sess := &session{
		cl:         cl,
		user:       u,
		peerCerts:  cs.peerCerts,
		remoteAddr: cs.remoteAddr,
		transport:  cs.transport,
		log:        log,
		conn:       cs.conn,
		slots:      make(chan struct{}, s.maxInflight),
	}
	if pk.Connect.PasswordFlag {
		sess.sasToken = string(pk.Connect.Password)
	}
	sess.ctx, sess.cancel = context.WithCancel(s.baseCtx)
	s.mu.Lock()
	cs.sess = sess
	s.mu.Unlock()
	log.Debug("mqtt device connected", "apiVersion", u.APIVersion, "clientVersion", u.ClientVersion,
		"keepalive", pk.Connect.Keepalive, "clean", pk.Connect.Clean)
	return nil
}

// OnConnectAuthenticate accepts every connection whose user name parsed.
// Real DPS accepts a CONNECT with a bad SAS token and answers 401 to the
// first request; the engine authenticates each request.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.s.sessionOf(cl) != nil
}

// OnACLCheck allows publishing to the two request topics and subscribing
// to the response filter, nothing else. The broker also asks before it
// delivers a message to a subscriber; that is always refused, because
// responses bypass the broker and must never reach another device.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if h.s.sessionOf(cl) == nil {
		return false
	}
	if write {
		_, err := parseRequestTopic(topic)
		return err == nil
	}
	return topic == ResponseFilter
}

// OnSubscribe caps the granted QoS at 1, as DPS does.
func (h *hook) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	filters := make(packets.Subscriptions, len(pk.Filters))
	copy(filters, pk.Filters)
	for i := range filters {
		filters[i].Qos = min(filters[i].Qos, 1)
	}
	pk.Filters = filters
	return pk
}

// OnPublish marks every request as not for delivery: the broker still
// acknowledges it (PUBACK for QoS 1) but forwards it to no subscriber.
func (h *hook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if _, err := parseRequestTopic(pk.TopicName); err != nil {
		return pk, packets.ErrRejectPacket
	}
	return pk, packets.CodeSuccessIgnore
}

// OnPublished runs after the broker has written the PUBACK of a QoS 1
// request (immediately for QoS 0), so any response written from here on
// follows the PUBACK on the wire, as the C# SDK requires.
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	sess := h.s.sessionOf(cl)
	if sess == nil {
		return
	}
	rt, err := parseRequestTopic(pk.TopicName)
	if err != nil {
		return
	}
	h.s.dispatch(sess, rt, bytes.Clone(pk.Payload))
}

// OnDisconnect cancels the requests the device still has in the engine.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if sess := h.s.sessionOf(cl); sess != nil {
		sess.cancel()
		sess.log.Debug("mqtt device disconnected", "err", err)
	}
}

// sessionOf returns the session of an accepted connection, or nil.
func (s *Server) sessionOf(cl *mqtt.Client) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cs := s.active[cl.Net.Conn]; cs != nil {
		return cs.sess
	}
	return nil
}
