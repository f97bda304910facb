package device

import (
	"github.com/dpsd/dpsd/internal/transport/wsconn"

	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/gorilla/websocket"

	"github.com/dpsd/dpsd/api/dps"
)

// MQTT topics of the DPS device API (device-protocol.md §5.2).
const (
	topicResponses      = "$dps/registrations/res/#"
	topicResponsePrefix = "$dps/registrations/res/"
	topicRegister       = "$dps/registrations/PUT/iotdps-register/?$rid="
	topicPoll           = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="

	// websocketPath is where the Node, C and Python SDKs open MQTT over
	// WebSockets.
	websocketPath = "/$iothub/websocket"
	mqttKeepAlive = 60 * time.Second
)

type mqttSession struct {
	s      *settings
	client mqtt.Client
	msgs   chan mqtt.Message
}

// openMQTT connects and subscribes to the response topic.
func openMQTT(ctx context.Context, s *settings) (*mqttSession, error) {
	tok, err := s.token(time.Now())
	if err != nil {
		return nil, err
	}
	m := &mqttSession{s: s, msgs: make(chan mqtt.Message, 16)}

	o := mqtt.NewClientOptions()
	if s.Transport == TransportMQTTWS {
		o.AddBroker("wss://" + s.hostPort(defaultHTTPSPort) + websocketPath)
	} else {
		o.AddBroker("tls://" + s.hostPort(defaultMQTTPort))
	}
	o.SetClientID(s.RegistrationID)
	o.SetUsername(s.IDScope + "/registrations/" + s.RegistrationID +
		"/api-version=" + url.QueryEscape(s.APIVersion) + "&ClientVersion=" + url.QueryEscape(s.ClientVersion))
	if tok != "" {
		o.SetPassword(tok) // X.509 devices send no password at all
	}
	o.SetProtocolVersion(4) // MQTT 3.1.1, the only version DPS speaks
	o.SetCleanSession(true)
	o.SetKeepAlive(mqttKeepAlive)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetConnectTimeout(s.reqTimeout)
	o.SetWriteTimeout(s.reqTimeout)
	o.SetOrderMatters(false)
	o.SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
		return m.dial(ctx)
	})
	m.client = mqtt.NewClient(o)

	if err := wait(ctx, m.client.Connect(), s.reqTimeout); err != nil {
		if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
			// DPS refuses bad certificates at CONNACK (code 5); report it
			// like the 401 it stands for.
			return nil, &Error{Op: "connect", StatusCode: 401, Detail: &dps.Error{
				ErrorCode: dps.CodeUnauthorized, Message: "MQTT connection refused: " + err.Error()}}
		}
		return nil, fmt.Errorf("device: MQTT connect %s: %w", s.RegistrationID, err)
	}
	s.progress(Event{Kind: EventConnected})
	if err := wait(ctx, m.client.Subscribe(topicResponses, 1, m.receive), s.reqTimeout); err != nil {
		m.close()
		return nil, fmt.Errorf("device: MQTT subscribe %s: %w", s.RegistrationID, err)
	}
	return m, nil
}

// dial opens the TLS (or WebSocket over TLS) connection paho speaks over.
func (m *mqttSession) dial(ctx context.Context) (net.Conn, error) {
	s := m.s
	if s.Transport != TransportMQTTWS {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: s.reqTimeout}, Config: s.tlsConfig}
		return d.DialContext(ctx, "tcp", s.addr(defaultMQTTPort))
	}
	addr := s.addr(defaultHTTPSPort)
	wd := websocket.Dialer{
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:  s.tlsConfig,
		HandshakeTimeout: s.reqTimeout,
		Subprotocols:     []string{"mqtt"},
		// No Proxy: never route through an environment proxy.
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

// receive is paho's handler for the response subscription. It must not
// block paho's router; one request is outstanding at a time, so the buffer
// only overflows with stray responses, which are dropped.
func (m *mqttSession) receive(_ mqtt.Client, msg mqtt.Message) {
	select {
	case m.msgs <- msg:
	default:
	}
}

func (m *mqttSession) register(ctx context.Context, body []byte) (*answer, error) {
	rid := newRID()
	m.s.progress(Event{Kind: EventRegistering})
	return m.request(ctx, topicRegister+rid, rid, body)
}

func (m *mqttSession) poll(ctx context.Context, operationID string) (*answer, error) {
	rid := newRID()
	// Node and Python send a single space as the poll payload.
	return m.request(ctx, topicPoll+rid+"&operationId="+url.QueryEscape(operationID), rid, []byte(" "))
}

// request publishes at QoS 1 and waits for the response carrying rid.
func (m *mqttSession) request(ctx context.Context, topic, rid string, payload []byte) (*answer, error) {
	ctx, cancel := context.WithTimeout(ctx, m.s.reqTimeout)
	defer cancel()
	if err := wait(ctx, m.client.Publish(topic, 1, false, payload), m.s.reqTimeout); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for response: %w", ctx.Err())
		case msg := <-m.msgs:
			rt, err := parseResponseTopic(msg.Topic())
			if err != nil || rt.rid != rid {
				continue // a stray or late answer to an earlier request
			}
			return &answer{status: rt.status, retryAfter: rt.retryAfter, hasRetryAfter: rt.hasRetryAfter, body: msg.Payload()}, nil
		}
	}
}

func (m *mqttSession) close() {
	// DISCONNECT without waiting long: the registration is finished.
	m.client.Disconnect(50)
}

// wait waits for a paho token, ctx or the timeout, whichever is first.
func wait(ctx context.Context, t mqtt.Token, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return fmt.Errorf("no answer within %v", timeout)
	}
}

// responseTopic is a parsed $dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}].
type responseTopic struct {
	status        int
	rid           string
	retryAfter    time.Duration
	hasRetryAfter bool
}

// parseResponseTopic parses a response topic. It accepts parameters in any
// order and ignores unknown ones; $rid is required, retry-after optional.
// An invalid retry-after counts as absent rather than losing the answer.
func parseResponseTopic(topic string) (responseTopic, error) {
	var rt responseTopic
	rest, ok := strings.CutPrefix(topic, topicResponsePrefix)
	if !ok {
		return rt, fmt.Errorf("topic %q is not a DPS response", topic)
	}
	code, query, ok := strings.Cut(rest, "/?")
	if !ok {
		return rt, fmt.Errorf("topic %q has no query", topic)
	}
	n, err := strconv.Atoi(code)
	if err != nil || n < 100 || n > 999 {
		return rt, fmt.Errorf("topic %q: invalid status %q", topic, code)
	}
	rt.status = n
	haveRID := false
	for part := range strings.SplitSeq(query, "&") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "$rid":
			if haveRID {
				return rt, fmt.Errorf("topic %q: repeated $rid", topic)
			}
			if rt.rid, err = url.QueryUnescape(v); err != nil {
				return rt, fmt.Errorf("topic %q: $rid: %w", topic, err)
			}
			haveRID = true
		case "retry-after":
			if dv, err := url.QueryUnescape(v); err == nil {
				if s, err := strconv.ParseUint(dv, 10, 32); err == nil {
					rt.retryAfter = min(time.Duration(s)*time.Second, maxRetryAfter)
					rt.hasRetryAfter = true
				}
			}
		}
	}
	if !haveRID {
		return rt, fmt.Errorf("topic %q has no $rid", topic)
	}
	return rt, nil
}
