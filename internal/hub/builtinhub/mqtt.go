package builtinhub

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/connlimit"
	"github.com/dpsd/dpsd/internal/transport/wsconn"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/mqtt311"
	"github.com/dpsd/dpsd/internal/sas"
)

// Device topics (iothub-surface.md §2.2).
const (
	topicTwinRes          = "$iothub/twin/res/"
	topicTwinPrefix       = "$iothub/twin/"
	topicTwinGet          = "$iothub/twin/GET/"
	topicTwinReported     = "$iothub/twin/PATCH/properties/reported/"
	topicDesiredPush      = "$iothub/twin/PATCH/properties/desired/"
	topicMethodsPost      = "$iothub/methods/POST/"
	topicMethodsRes       = "$iothub/methods/res/"
	filterTwinRes         = "$iothub/twin/res/#"
	filterDesired         = "$iothub/twin/PATCH/properties/desired/#"
	filterMethods         = "$iothub/methods/POST/#"
	maxMQTTPacket         = 256<<10 + 4<<10 // 256 KiB telemetry plus topic
	defaultConnectTimeout = 30 * time.Second
	defaultBodyTimeout    = 30 * time.Second
	defaultMaxKeepAlive   = 1177 * time.Second
	twinRequestTimeout    = 10 * time.Second
	listenerTLS           = "mqtts"
	listenerWebSocket     = "wss"
	defaultMethodTimeout  = 30 * time.Second
)

// connInfo is what the hub knows about one accepted connection before and
// after its CONNECT.
type connInfo struct {
	peerCerts []*x509.Certificate
	deviceID  string
}

func (h *Hub) startBroker() error {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxMQTTPacket
	caps.RetainAvailable = 0 // the hub stores no retained messages
	caps.SharedSubAvailable = 0
	caps.WildcardSubAvailable = 1
	h.broker = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		InlineClient:           false,
		Logger:                 slog.New(quietHandler{h.log.With("component", "hub-mqtt").Handler()}),
		SysTopicResendInterval: 0,
	})
	h.hook = &deviceHook{h: h}
	if err := h.broker.AddHook(h.hook, nil); err != nil {
		return fmt.Errorf("hub %s: mqtt hook: %w", h.cfg.Name, err)
	}
	// Serve reads the stored sessions (through the hook) and starts the
	// broker's housekeeping; connections come from our own listeners.
	if err := h.broker.Serve(); err != nil {
		return fmt.Errorf("hub %s: mqtt broker: %w", h.cfg.Name, err)
	}
	return nil
}

// acceptMQTT serves MQTT over TLS until the listener closes.
func (h *Hub) acceptMQTT() {
	for {
		c, err := connlimit.Accept(h.mqttL, h.log, "hub mqtt")
		if err != nil {
			return
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			tc := tls.Server(c, h.tls)
			_ = tc.SetDeadline(time.Now().Add(h.connectTimeout))
			ctx, cancel := context.WithTimeout(context.Background(), h.connectTimeout)
			err := tc.HandshakeContext(ctx)
			cancel()
			if err != nil {
				h.log.Debug("hub mqtt TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
				c.Close()
				return
			}
			h.serveMQTT(tc, listenerTLS, tc.ConnectionState().PeerCertificates)
		}()
	}
}

// serveMQTT hands one connection to the broker until the session ends.
func (h *Hub) serveMQTT(c net.Conn, listener string, peers []*x509.Certificate) {
	// The broker reads the CONNECT under this deadline (a WebSocket has
	// none of its own), then replaces it with the keep-alive's.
	_ = c.SetDeadline(time.Now().Add(h.connectTimeout))
	info := &connInfo{peerCerts: peers}
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		c.Close()
		return
	}
	h.conns[c] = info
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		c.Close()
	}()
	err := h.broker.EstablishConnection(listener, c)
	h.log.Debug("hub mqtt connection ended", "deviceId", info.deviceID, "err", err)
}

func (h *Hub) connInfo(cl *mqtt.Client) *connInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[cl.Net.Conn]
}

// serveWebSocket serves MQTT over WebSockets (Node: wss://{host}/$iothub/websocket).
func (h *Hub) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	c, err := wsconn.Upgrade(w, r)
	if err != nil {
		return // Upgrade has answered
	}
	var peers []*x509.Certificate
	if r.TLS != nil {
		peers = r.TLS.PeerCertificates
	}
	h.wg.Add(1)
	defer h.wg.Done()
	h.serveMQTT(c, listenerWebSocket, peers)
}

// deviceHook bends the broker into a hub's device endpoint: it
// authenticates devices, limits them to their own topics, answers twin and
// method traffic itself (never routing device messages to other clients),
// and persists clean-session-off sessions in the store.
type deviceHook struct {
	mqtt.HookBase
	h *Hub
}

func (k *deviceHook) ID() string { return "iothub" }

func (k *deviceHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnSessionEstablish,
		mqtt.OnSessionEstablished,
		mqtt.OnACLCheck,
		mqtt.OnSubscribe,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnPublish,
		mqtt.OnPublished,
		mqtt.OnDisconnect,
		mqtt.OnPacketEncode,
		mqtt.OnPacketRead,
		mqtt.StoredClients,
		mqtt.StoredSubscriptions,
	}, []byte{b})
}

// OnPacketEncode answers MQTT 3.1.1 clients in 3.1.1 (mqtt311.Encode): the
// broker would send them MQTT 5 CONNACK codes and DISCONNECT packets.
func (k *deviceHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return mqtt311.Encode(cl, pk)
}

// OnConnect refuses MQTT 5 (IoT Hub speaks 3.1.1) and drops wills, which
// would be routed to other clients.
func (k *deviceHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if pk.ProtocolVersion > 4 {
		_ = k.h.broker.SendConnack(cl, packets.ErrUnsupportedProtocolVersion, false, nil)
		return packets.ErrUnsupportedProtocolVersion
	}
	cl.Properties.Will = mqtt.Will{}
	// The broker closes a connection silent for 1.5 times the keep-alive,
	// and never one that asked for none: IoT Hub caps both.
	if ka := cl.State.Keepalive; ka == 0 || ka > k.h.maxKeepAlive {
		cl.State.Keepalive = k.h.maxKeepAlive
	}
	return nil
}

// keepAliveSeconds turns MaxKeepAlive into the seconds MQTT counts in.
func keepAliveSeconds(d time.Duration) uint16 {
	return uint16(min(max(d/time.Second, 1), 1<<15))
}

// OnConnectAuthenticate checks the device's SAS token or certificate.
// Refusal is CONNACK 5 (not authorized), which the SDKs report as
// UnauthorizedError.
func (k *deviceHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	h := k.h
	info := h.connInfo(cl)
	if info == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), twinRequestTimeout)
	defer cancel()
	id := pk.Connect.ClientIdentifier
	err := h.authenticateDevice(ctx, id, string(pk.Connect.Username), string(pk.Connect.Password), info.peerCerts)
	if err != nil {
		h.log.Info("device connect refused", "clientId", id, "remote", cl.Net.Remote, "err", err)
		return false
	}
	info.deviceID = id
	return true
}

// authenticateDevice is the CONNECT check of iothub-surface.md §4.1.2.
// A module connects with client id "{deviceId}/{moduleId}" and user name
// "{hub}/{deviceId}/{moduleId}/…".
func (h *Hub) authenticateDevice(ctx context.Context, id, username, password string, peers []*x509.Certificate) error {
	if id == "" || strings.Count(id, "/") > 1 {
		return errors.New("client id must be a device id or {deviceId}/{moduleId}")
	}
	host, rest, ok := strings.Cut(username, "/")
	if !ok || !h.isAlias(host) {
		return fmt.Errorf("user name %q does not start with this hub's host name", username)
	}
	devID, modID, isModule := strings.Cut(id, "/")
	dev, rest, _ := strings.Cut(rest, "/")
	if dev != devID {
		return fmt.Errorf("user name %q is not for device %q", username, devID)
	}
	if mod, _, _ := strings.Cut(rest, "/"); isModule && mod != modID {
		return fmt.Errorf("user name %q is not for module %q", username, modID)
	}
	d, err := h.load(ctx, devID)
	if err != nil {
		return err
	}
	if d.Status != azurehub.StatusEnabled {
		return errors.New("device is disabled")
	}
	if isModule {
		if d, err = h.loadTwin(ctx, id); err != nil {
			return err
		}
	}
	switch d.Auth.Type {
	case azurehub.AuthSAS:
		return h.checkDeviceToken(d, password)
	case azurehub.AuthSelfSigned:
		if len(peers) == 0 {
			return errors.New("self-signed device presented no certificate")
		}
		if !thumbprintMatches(peers[0], d.Auth.X509Thumbprint) {
			return errors.New("client certificate thumbprint does not match the device's")
		}
		if now := h.now(); now.After(peers[0].NotAfter) || now.Before(peers[0].NotBefore) {
			return errors.New("client certificate is expired or not yet valid")
		}
		return nil
	case azurehub.AuthCertificateAuthority:
		return h.checkCADevice(ctx, d, peers)
	}
	return fmt.Errorf("authentication type %q is not supported by built-in hubs", d.Auth.Type)
}

func (h *Hub) checkDeviceToken(d *deviceDoc, password string) error {
	tok, err := sas.Parse(password)
	if err != nil {
		return err
	}
	if tok.ExpiredAt(h.now()) {
		return sas.ErrExpired
	}
	res, err := tok.DecodedResource()
	if err != nil {
		return err
	}
	host, path, _ := strings.Cut(res, "/")
	want := "devices/" + strings.ToLower(d.DeviceID)
	if d.ModuleID != "" {
		want += "/modules/" + strings.ToLower(d.ModuleID)
	}
	path = strings.ToLower(strings.TrimSuffix(path, "/"))
	if !h.isAlias(host) {
		return fmt.Errorf("token resource %q is not this hub", res)
	}
	var keys [][]byte
	if tok.KeyName == "" {
		if path != want {
			return fmt.Errorf("token resource %q is not this device", res)
		}
		if d.Auth.SymmetricKey != nil {
			keys = [][]byte{decodeKey(d.Auth.SymmetricKey.PrimaryKey), decodeKey(d.Auth.SymmetricKey.SecondaryKey)}
		}
	} else {
		// A policy key used on behalf of the device.
		pol, ok := h.cfg.policy(tok.KeyName)
		if !ok || !pol.has(RightDeviceConnect) {
			return fmt.Errorf("policy %q cannot connect devices", tok.KeyName)
		}
		if path != "" && path != "devices" && path != want {
			return fmt.Errorf("token resource %q is not this device", res)
		}
		keys = [][]byte{decodeKey(pol.PrimaryKey), decodeKey(pol.SecondaryKey)}
	}
	if tok.VerifyAny(keys...) < 0 {
		return sas.ErrSignature
	}
	return nil
}

func thumbprintMatches(cert *x509.Certificate, t *azurehub.X509Thumbprint) bool {
	if t == nil {
		return false
	}
	s1 := sha1.Sum(cert.Raw)
	s256 := sha256.Sum256(cert.Raw)
	got := []string{hex.EncodeToString(s1[:]), hex.EncodeToString(s256[:])}
	for _, want := range []*string{t.PrimaryThumbprint, t.SecondaryThumbprint} {
		if want == nil {
			continue
		}
		w := strings.ToLower(strings.ReplaceAll(*want, ":", ""))
		for _, g := range got {
			if w == g {
				return true
			}
		}
	}
	return false
}

// OnSessionEstablish records the connection before the CONNACK goes out,
// so the registry shows the device connected as soon as it is.
func (k *deviceHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	k.h.setConnected(cl.ID, cl, true)
}

// OnSessionEstablished persists the session, now holding the
// subscriptions it inherited.
func (k *deviceHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	k.h.saveSession(cl)
	// A persistent session may be subscribed already: messages sent
	// while the device was away go out now.
	go k.h.deliverC2D(cl.ID)
}

// OnDisconnect records the disconnection; a clean session ends with it.
func (k *deviceHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if cl.Net.Conn == nil {
		return // a session restored from the store, not a connection
	}
	k.h.mqttC2DEnded(cl)
	if !cl.IsTakenOver() {
		k.h.setConnected(cl.ID, cl, false)
		if expire {
			k.h.deleteSessionRecord(cl.ID)
		}
	}
}

// OnACLCheck lets a device publish only to its own telemetry topic and the
// twin and method request topics, and subscribe only to the hub's filters
// for it. The broker also asks before delivering to a subscriber; only C2D
// topics of the device itself pass.
func (k *deviceHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id := cl.ID
	if dev, mod, ok := strings.Cut(id, "/"); ok {
		// A module sends telemetry and uses its twin and methods; it
		// receives no cloud-to-device messages.
		if write {
			return strings.HasPrefix(topic, "devices/"+dev+"/modules/"+mod+"/messages/events/") ||
				topic == "devices/"+dev+"/modules/"+mod+"/messages/events" ||
				strings.HasPrefix(topic, topicTwinPrefix) ||
				strings.HasPrefix(topic, topicMethodsRes)
		}
		switch topic {
		case filterTwinRes, filterDesired, filterMethods:
			return true
		}
		return false
	}
	if write {
		return strings.HasPrefix(topic, "devices/"+id+"/messages/events/") ||
			topic == "devices/"+id+"/messages/events" ||
			strings.HasPrefix(topic, topicTwinPrefix) ||
			strings.HasPrefix(topic, topicMethodsRes)
	}
	switch topic {
	case filterTwinRes, filterDesired, filterMethods, "devices/" + id + "/messages/devicebound/#":
		return true
	}
	return strings.HasPrefix(topic, "devices/"+id+"/messages/devicebound/")
}

// MaxSessionFilters bounds the subscription filters of one device
// session. An SDK subscribes to at most four; without a bound a device
// could grow its session (and the session record rewritten on every
// SUBSCRIBE) without end.
const MaxSessionFilters = 32

// refusedFilter stands in for a filter over MaxSessionFilters: it is not a
// valid filter, so the broker refuses it in the SUBACK (0x80) and
// subscribes nothing.
const refusedFilter = "#/over-the-session-limit"

// OnSubscribe grants at most QoS 1, as IoT Hub does, and refuses filters
// beyond MaxSessionFilters per session (a filter the session already
// holds is only renewed and does not count).
func (k *deviceHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	filters := make(packets.Subscriptions, len(pk.Filters))
	copy(filters, pk.Filters)
	n := cl.State.Subscriptions.Len()
	for i := range filters {
		filters[i].Qos = min(filters[i].Qos, 1)
		if subscribed(cl, filters[i].Filter) {
			continue
		}
		if n >= MaxSessionFilters {
			filters[i].Filter = refusedFilter
			continue
		}
		n++
	}
	pk.Filters = filters
	return pk
}

// OnSubscribed and OnUnsubscribed keep the stored session current. A
// clean session has nothing stored (OnSessionEstablished removed it), so
// its subscriptions cost no store write.
func (k *deviceHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if !cl.Properties.Clean {
		k.h.saveSession(cl)
	}
	for _, f := range pk.Filters {
		if strings.HasPrefix(f.Filter, "devices/"+cl.ID+"/messages/devicebound/") {
			go k.h.deliverC2D(cl.ID)
		}
	}
}

func (k *deviceHook) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) {
	if !cl.Properties.Clean {
		k.h.saveSession(cl)
	}
}

// OnPublish takes in every device message: the broker acknowledges it
// (PUBACK for QoS 1) but routes it nowhere.
func (k *deviceHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if pk.FixedHeader.Qos > 1 {
		// IoT Hub does not support QoS 2 and closes the connection.
		cl.Stop(packets.ErrQosNotSupported)
		return pk, packets.ErrRejectPacket
	}
	k.h.touch(cl.ID)
	if strings.HasPrefix(pk.TopicName, "devices/") {
		// Stored before the PUBACK goes out: an acknowledged message is
		// enqueued, as the SDKs' "MessageEnqueued" says, and survives a
		// crash. One that cannot be stored gets no PUBACK: the
		// connection ends, and the device sends it again on its next.
		if err := k.h.recordTelemetry(cl.ID, pk.TopicName, bytes.Clone(pk.Payload)); err != nil {
			cl.Stop(packets.ErrServerUnavailable)
			return pk, packets.ErrRejectPacket
		}
	}
	return pk, packets.CodeSuccessIgnore
}

// OnPublished handles a device message after its PUBACK went out.
func (k *deviceHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	k.h.handleDevicePublish(cl, pk.TopicName, bytes.Clone(pk.Payload))
}

// OnPacketRead completes the cloud-to-device message a device
// acknowledged: MQTT has no reject or abandon, and IoT Hub takes the
// PUBACK as completion.
func (k *deviceHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Puback {
		k.h.mqttC2DAcked(cl, pk.PacketID)
	}
	return pk, nil
}

// StoredClients and StoredSubscriptions restore persistent sessions at
// start, so a device that reconnects with clean session off finds its
// subscriptions (the Node SDK never subscribes again).
func (k *deviceHook) StoredClients() ([]storageClient, error) { return k.h.storedClients() }

func (k *deviceHook) StoredSubscriptions() ([]storageSubscription, error) {
	return k.h.storedSubscriptions()
}

func (h *Hub) handleDevicePublish(cl *mqtt.Client, topic string, payload []byte) {
	id := cl.ID
	switch {
	case strings.HasPrefix(topic, topicTwinPrefix):
		h.handleTwinRequest(cl, topic, payload)
	case strings.HasPrefix(topic, topicMethodsRes):
		h.handleMethodResponse(id, topic, payload)
	}
}

// handleTwinRequest answers every twin request, always on the requesting
// connection only and always with a body the Node SDK can parse: it hangs
// on unanswered requests, crashes on an empty GET body, and ignores the
// status in the topic, failing only on a body with "errorCode".
func (h *Hub) handleTwinRequest(cl *mqtt.Client, topic string, payload []byte) {
	op, query, _ := strings.Cut(topic, "?")
	q, _ := url.ParseQuery(query)
	rid := q.Get("$rid")
	if rid == "" {
		rid = rawQueryValue(query, "$rid")
	}
	ctx, cancel := context.WithTimeout(context.Background(), twinRequestTimeout)
	defer cancel()
	switch op {
	case topicTwinGet:
		d, err := h.loadTwin(ctx, cl.ID)
		if err != nil {
			h.twinError(cl, rid, err)
			return
		}
		body, _ := json.Marshal(map[string]any{"desired": d.Desired.deviceView(), "reported": d.Reported.deviceView()})
		h.writeTo(cl, topicTwinRes+"200/?$rid="+rid, body)
	case topicTwinReported:
		var patch map[string]any
		if err := decodeJSON(payload, &patch); err != nil || patch == nil {
			h.twinError(cl, rid, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The reported properties patch must be a JSON object."))
			return
		}
		v, err := h.updateReported(ctx, cl.ID, patch)
		if err != nil {
			h.twinError(cl, rid, err)
			return
		}
		h.writeTo(cl, topicTwinRes+"204/?$rid="+rid+"&$version="+strconv.FormatInt(v, 10), nil)
	default:
		h.twinError(cl, rid, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Unsupported twin operation %q.", op))
	}
}

// rawQueryValue finds key in a query string without decoding, for $rid
// values that url.ParseQuery rejects.
func rawQueryValue(query, key string) string {
	for part := range strings.SplitSeq(query, "&") {
		if k, v, ok := strings.Cut(part, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// twinError answers a twin request with the hub's error body.
func (h *Hub) twinError(cl *mqtt.Client, rid string, err error) {
	var he *azurehub.Error
	if !errors.As(err, &he) {
		h.log.Error("twin request failed", "deviceId", cl.ID, "err", err)
		he = azurehub.Errorf(http.StatusInternalServerError, azurehub.CodeServerError, "Internal error.")
	}
	status := he.StatusCode
	body, _ := json.Marshal(map[string]any{
		"errorCode":    status*1000 + 1,
		"trackingId":   rid,
		"message":      he.Message,
		"timestampUtc": h.now().UTC().Format(time.RFC3339Nano),
	})
	h.writeTo(cl, topicTwinRes+strconv.Itoa(status)+"/?$rid="+rid, body)
}

// writeTo sends a QoS 0 publish to one client only; server-wide publishing
// would reach every device subscribed to the same literal filter.
func (h *Hub) writeTo(cl *mqtt.Client, topic string, payload []byte) {
	err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 0},
		TopicName:   topic,
		Payload:     payload,
	})
	if err != nil {
		h.log.Debug("writing to device failed", "deviceId", cl.ID, "topic", topic, "err", err)
	}
}

// subscribed reports whether a client's session holds filter.
func subscribed(cl *mqtt.Client, filter string) bool {
	_, ok := cl.State.Subscriptions.Get(filter)
	return ok
}

// pushDesired sends a desired-properties change to the device if it is
// connected and subscribed (possibly in an earlier connection of its
// persistent session).
func (h *Hub) pushDesired(id string, patch map[string]any, version int64) {
	body := make(map[string]any, len(patch)+1)
	for k, v := range patch {
		body[k] = v
	}
	body[versionKey] = version
	data, err := json.Marshal(body)
	if err != nil {
		return
	}
	h.pushDesiredHere(id, data, version)
	h.announceDesired(id, data, version)
}

// pushDesiredHere sends an encoded desired-properties change to the
// device if it is connected to this node and subscribed.
func (h *Hub) pushDesiredHere(id string, data []byte, version int64) {
	if cl := h.client(id); cl != nil && subscribed(cl, filterDesired) {
		h.writeTo(cl, topicDesiredPush+"?$version="+strconv.FormatInt(version, 10), data)
	}
	h.pushDesiredAMQP(id, data, version)
}

// pushDesiredFrom pushes a desired-properties change another node made
// to the device, if it is connected here. A change too large for the
// event is sent as the whole desired properties, read from the store:
// the device then has them all, as after a full twin read.
func (h *Hub) pushDesiredFrom(ev hubEvent) {
	data := []byte(ev.Patch)
	if len(data) == 0 {
		if h.client(ev.Device) == nil && !h.hasAMQPDesired(ev.Device) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d, err := h.loadTwin(ctx, ev.Device)
		cancel()
		if err != nil {
			h.log.Debug("desired properties changed on another node not pushed", "deviceId", ev.Device, "err", err)
			return
		}
		if data, err = json.Marshal(d.Desired.deviceView()); err != nil {
			return
		}
		ev.Version = d.Desired.Version
	}
	h.pushDesiredHere(ev.Device, data, ev.Version)
}

// InvokeMethod calls a direct method on a connected device and waits for
// its answer.
func (h *Hub) InvokeMethod(ctx context.Context, id string, req *MethodRequest) (*MethodResult, error) {
	if err := validDeviceID(id); err != nil {
		return nil, err
	}
	return h.invokeMethod(ctx, id, req)
}

// InvokeModuleMethod calls a direct method on a connected module.
func (h *Hub) InvokeModuleMethod(ctx context.Context, dev, mod string, req *MethodRequest) (*MethodResult, error) {
	tid, err := moduleTID(dev, mod)
	if err != nil {
		return nil, err
	}
	return h.invokeMethod(ctx, tid, req)
}

// invokeMethod is InvokeMethod for a device or a module (loadTwin).
func (h *Hub) invokeMethod(ctx context.Context, id string, req *MethodRequest) (*MethodResult, error) {
	return h.invoke(ctx, id, req, true)
}

// invokeHere invokes a method on a device connected to this node only.
func (h *Hub) invokeHere(ctx context.Context, id string, req *MethodRequest) (*MethodResult, error) {
	return h.invoke(ctx, id, req, false)
}

// invoke invokes a method on the device if it is connected here, or else,
// with elsewhere, through the node it is connected to.
func (h *Hub) invoke(ctx context.Context, id string, req *MethodRequest, elsewhere bool) (*MethodResult, error) {
	if req.MethodName == "" {
		return nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "methodName is required.")
	}
	if _, err := h.loadTwin(ctx, id); err != nil {
		return nil, err
	}
	cl := h.client(id)
	if cl != nil && !subscribed(cl, filterMethods) {
		cl = nil
	}
	amqpLink := h.amqpMethodLink(id)
	if cl == nil && amqpLink == nil {
		if elsewhere && h.bus != nil {
			// Perhaps connected to another node.
			return h.invokeElsewhere(ctx, id, req)
		}
		return nil, azurehub.Errorf(http.StatusNotFound, "DeviceNotOnline", "Device %s is not online or has not subscribed to direct methods.", id)
	}
	timeout := h.methodTimeout
	if req.ResponseTimeoutInSeconds > 0 {
		timeout = time.Duration(req.ResponseTimeoutInSeconds) * time.Second
	}
	rid := strconv.FormatUint(nextRID(), 16)
	var corr wire.UUID
	if cl == nil {
		// Over AMQP the request id is the message's correlation id: a
		// uuid, as IoT Hub sends it.
		corr = newUUID()
		rid = corr.String()
	}
	ch := make(chan MethodResult, 1)
	h.mu.Lock()
	h.methods[rid] = pendingMethod{deviceID: id, ch: ch}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.methods, rid)
		h.mu.Unlock()
	}()
	payload := []byte(req.Payload)
	if len(payload) == 0 {
		payload = []byte("null")
	}
	if cl != nil {
		h.writeTo(cl, topicMethodsPost+req.MethodName+"/?$rid="+rid, payload)
	} else if err := h.invokeAMQP(ctx, amqpLink, req.MethodName, corr, payload); err != nil {
		return nil, azurehub.Errorf(http.StatusNotFound, "DeviceNotOnline", "Device %s is not online: %v", id, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case res := <-ch:
		return &res, nil
	case <-t.C:
		return nil, azurehub.Errorf(http.StatusGatewayTimeout, "GatewayTimeout", "Timed out waiting for the response from device %s.", id)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

var (
	ridMu  sync.Mutex
	ridSeq uint64
)

func nextRID() uint64 {
	ridMu.Lock()
	defer ridMu.Unlock()
	ridSeq++
	return ridSeq
}

// pendingMethod is a direct method call waiting for its device's answer.
type pendingMethod struct {
	deviceID string
	ch       chan MethodResult
}

func (h *Hub) handleMethodResponse(id, topic string, payload []byte) {
	rest := strings.TrimPrefix(topic, topicMethodsRes)
	statusStr, query, _ := strings.Cut(rest, "/")
	query = strings.TrimPrefix(query, "?")
	rid := rawQueryValue(query, "$rid")
	status, err := strconv.Atoi(statusStr)
	if err != nil {
		h.log.Debug("malformed method response", "deviceId", id, "topic", topic)
		return
	}
	h.answerMethod(id, rid, status, payload)
}

// answerMethod passes a device's answer to the method call rid waits for.
func (h *Hub) answerMethod(id, rid string, status int, payload []byte) {
	body := json.RawMessage(payload)
	if !json.Valid(body) {
		b, _ := json.Marshal(string(payload))
		body = b
	}
	if len(payload) == 0 {
		body = json.RawMessage("null")
	}
	h.mu.Lock()
	p, ok := h.methods[rid]
	h.mu.Unlock()
	// Only the device the method was sent to may answer it: request ids
	// are sequential, so another device could otherwise guess one.
	if ok && strings.EqualFold(p.deviceID, id) {
		ch := p.ch
		select {
		case ch <- MethodResult{Status: status, Payload: body}:
		default:
		}
	}
}

// quietHandler lowers the broker's info logs to debug: a hub logs device
// connections itself.
type quietHandler struct{ slog.Handler }

func (q quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelInfo {
		r.Level = slog.LevelDebug
	}
	if !q.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return q.Handler.Handle(ctx, r)
}

func (q quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return q.Handler.Enabled(ctx, min(l, slog.LevelInfo))
}

func (q quietHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return quietHandler{q.Handler.WithAttrs(a)}
}

func (q quietHandler) WithGroup(g string) slog.Handler { return quietHandler{q.Handler.WithGroup(g)} }
