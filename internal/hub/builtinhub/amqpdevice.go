package builtinhub

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
)

// Twins and direct methods over AMQP, as the Azure device SDKs (Node's
// azure-iot-device-amqp, the C and C# SDKs) use them: a pair of links on
// /devices/{id}/twin and another on /devices/{id}/methods/devicebound, or
// for a module on /devices/{id}/modules/{moduleId}/twin and
// /devices/{id}/modules/{moduleId}/methods/devicebound. The C and C# SDKs
// write the addresses as amqps://{host}[:port]/devices/…, Node as the path
// alone. Each pair's links carry the same com.microsoft:channel-correlation-id
// attach property (twin:{uuid}, methods:{uuid}, or the C SDK's
// {id}[/{moduleId}]), by which a twin request's answer goes to the
// receiver link of its own pair.
//
// Twin requests come on the device's sender link with the operation
// (GET, PATCH, PUT, DELETE) and resource in the message annotations and a
// correlation id; the answer goes on the device's receiver link with the
// same correlation id and the status (and, for a reported-properties
// patch, the new version) in the message annotations. PUT and DELETE of
// /notifications/twin/properties/desired turn desired-property updates
// on and off; an update comes on the receiver link without a correlation
// id. A method call goes on the device's methods receiver link with the
// method name in the IoThub-methodname application property and a
// correlation id, a uuid as IoT Hub sends it (the C SDK takes no other);
// the device answers on its sender link with the same correlation id and
// IoThub-status.
const (
	amqpTwinNode      = "twin"
	amqpMethodsNode   = "methods/devicebound"
	twinOpGet         = "GET"
	twinOpPatch       = "PATCH"
	twinOpPut         = "PUT"
	twinOpDelete      = "DELETE"
	twinResReported   = "/properties/reported"
	twinResDesiredSub = "/notifications/twin/properties/desired"
	methodNameProp    = "IoThub-methodname"
	methodStatusProp  = "IoThub-status"
	// channelCorrelationProp pairs a client's twin (or methods) links.
	channelCorrelationProp = wire.Symbol("com.microsoft:channel-correlation-id")
)

// amqpDeviceLinks are the AMQP twin and method links of a hub's devices.
type amqpDeviceLinks struct {
	mu sync.Mutex
	// twinOut is each connection's twin receiver links of a device (or
	// module), by channel correlation id, where its requests are
	// answered.
	twinOut map[twinLinkKey]map[string]*wire.Link
	// desired is the twin receiver link of a device that turned
	// desired-property updates on, by lower-cased id.
	desired map[string]*wire.Link
	// methods is the methods receiver link of a device, by lower-cased
	// id: the newest wins.
	methods map[string]*wire.Link
}

type twinLinkKey struct {
	conn   *wire.Conn
	device string // lower-cased; "{deviceId}/{moduleId}" for a module
}

// channelID is a link's com.microsoft:channel-correlation-id, "" if none.
func channelID(l *wire.Link) string {
	v, _ := l.Properties.Get(channelCorrelationProp)
	return wire.Text(v)
}

// nodePath is the path of a link address: the C and C# SDKs write
// amqps://{host}[:port]/devices/…, Node /devices/….
func nodePath(addr string) string {
	for _, scheme := range []string{"amqps://", "amqp://"} {
		if rest, ok := strings.CutPrefix(addr, scheme); ok {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				return rest[i:]
			}
			return "/"
		}
	}
	return addr
}

// deviceNode parses /devices/{id}/twin and /devices/{id}/methods/devicebound,
// and a module's /devices/{id}/modules/{moduleId}/twin and
// /devices/{id}/modules/{moduleId}/methods/devicebound, whose id it
// returns as "{id}/{moduleId}".
func deviceNode(addr string) (id, node string, ok bool) {
	rest, ok := strings.CutPrefix(nodePath(addr), "/devices/")
	if !ok {
		return "", "", false
	}
	dev, rest, ok := strings.Cut(rest, "/")
	if !ok || dev == "" {
		return "", "", false
	}
	var mod string
	if m, isModule := strings.CutPrefix(rest, "modules/"); isModule {
		if mod, rest, ok = strings.Cut(m, "/"); !ok || mod == "" {
			return "", "", false
		}
	}
	node = strings.ToLower(rest)
	if node != amqpTwinNode && node != amqpMethodsNode {
		return "", "", false
	}
	if dev, ok = unescapeID(dev); !ok {
		return "", "", false
	}
	if mod == "" {
		return dev, node, true
	}
	if mod, ok = unescapeID(mod); !ok {
		return "", "", false
	}
	return dev + "/" + mod, node, true
}

// unescapeID decodes a device or module id of a link address (the C# SDK
// escapes them); ok is false when the id is empty or holds a '/'.
func unescapeID(s string) (string, bool) {
	if u, err := url.PathUnescape(s); err == nil {
		s = u
	}
	return s, s != "" && !strings.Contains(s, "/")
}

// attachDeviceNode takes a device's twin or method link; handled reports
// whether addr is one.
func (h *Hub) attachDeviceNode(l *wire.Link) (handled bool) {
	id, node, ok := deviceNode(l.Address)
	if !ok {
		return false
	}
	if l.PeerIsSender {
		return true // requests (twin) or answers (methods): see deviceNodeMessage
	}
	d := &h.amqpDev
	key := strings.ToLower(id)
	d.mu.Lock()
	defer d.mu.Unlock()
	switch node {
	case amqpTwinNode:
		if d.twinOut == nil {
			d.twinOut = map[twinLinkKey]map[string]*wire.Link{}
		}
		k := twinLinkKey{l.Conn(), key}
		if d.twinOut[k] == nil {
			d.twinOut[k] = map[string]*wire.Link{}
		}
		d.twinOut[k][channelID(l)] = l
	case amqpMethodsNode:
		if d.methods == nil {
			d.methods = map[string]*wire.Link{}
		}
		d.methods[key] = l
	}
	return true
}

// detachDeviceNode forgets a twin or method link that ended.
func (h *Hub) detachDeviceNode(l *wire.Link) {
	id, _, ok := deviceNode(l.Address)
	if !ok || l.PeerIsSender {
		return
	}
	d := &h.amqpDev
	key := strings.ToLower(id)
	d.mu.Lock()
	defer d.mu.Unlock()
	k, ch := twinLinkKey{l.Conn(), key}, channelID(l)
	if byChannel := d.twinOut[k]; byChannel[ch] == l {
		delete(byChannel, ch)
		if len(byChannel) == 0 {
			delete(d.twinOut, k)
		}
	}
	if d.desired[key] == l {
		delete(d.desired, key)
	}
	if d.methods[key] == l {
		delete(d.methods, key)
	}
}

// deviceNodeMessage handles a message a device sent on its twin or
// methods link; handled reports whether the link is one.
func (h *Hub) deviceNodeMessage(ctx context.Context, d *wire.Delivery) (handled bool) {
	id, node, ok := deviceNode(d.Link.Address)
	if !ok {
		return false
	}
	h.touch(id)
	switch node {
	case amqpTwinNode:
		_ = d.Accept()
		h.twinRequestAMQP(ctx, d.Link, id, d.Message)
	case amqpMethodsNode:
		m := d.Message
		rid := strings.ToLower(wire.Text(m.Properties.CorrelationID))
		if u, ok := m.Properties.CorrelationID.(wire.UUID); ok {
			rid = u.String()
		}
		status, err := intProperty(m.ApplicationProperties[methodStatusProp])
		if err != nil || rid == "" {
			_ = d.Reject(&wire.Error{Condition: "amqp:invalid-field", Description: "a method response needs a correlation id and an integer " + methodStatusProp})
			return true
		}
		_ = d.Accept()
		h.answerMethod(id, rid, status, m.Body())
	}
	return true
}

func intProperty(v any) (int, error) {
	switch x := v.(type) {
	case int32:
		return int(x), nil
	case int64:
		return int(x), nil
	case int:
		return x, nil
	case uint32:
		return int(x), nil
	case int16:
		return int(x), nil
	case uint16:
		return int(x), nil
	case uint8:
		return int(x), nil
	case int8:
		return int(x), nil
	case uint64:
		return int(x), nil
	case string:
		var n int
		_, err := fmt.Sscan(x, &n)
		return n, err
	}
	return 0, fmt.Errorf("not an integer: %T", v)
}

// twinReceiver returns the twin receiver link that answers requests on
// the twin sender link in: the one of the same connection and channel
// correlation id or, for a client that did not set one on both, any of
// the device's on the connection. d.mu is held.
func (d *amqpDeviceLinks) twinReceiver(in *wire.Link, key string) *wire.Link {
	byChannel := d.twinOut[twinLinkKey{in.Conn(), key}]
	if l := byChannel[channelID(in)]; l != nil {
		return l
	}
	for _, l := range byChannel {
		return l
	}
	return nil
}

// twinRequestAMQP answers a twin request of a device or module on its
// twin receiver link of the same connection (and channel).
func (h *Hub) twinRequestAMQP(ctx context.Context, in *wire.Link, id string, m *wire.Message) {
	op := strings.ToUpper(wire.Text(m.MessageAnnotations["operation"]))
	res := wire.Text(m.MessageAnnotations["resource"])
	key := strings.ToLower(id)
	ctx, cancel := context.WithTimeout(ctx, twinRequestTimeout)
	defer cancel()
	var (
		status  = http.StatusOK
		body    []byte
		version int64
		err     error
	)
	switch {
	case op == twinOpGet:
		var d *deviceDoc
		if d, err = h.loadTwin(ctx, id); err == nil {
			body, err = json.Marshal(map[string]any{"desired": d.Desired.deviceView(), "reported": d.Reported.deviceView()})
		}
	case op == twinOpPatch && res == twinResReported:
		var patch map[string]any
		if e := decodeJSON(m.Body(), &patch); e != nil || patch == nil {
			err = azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The reported properties patch must be a JSON object.")
			break
		}
		status = http.StatusNoContent
		version, err = h.updateReported(ctx, id, patch)
	case (op == twinOpPut || op == twinOpDelete) && res == twinResDesiredSub:
		h.amqpDev.mu.Lock()
		out := h.amqpDev.twinReceiver(in, key)
		if h.amqpDev.desired == nil {
			h.amqpDev.desired = map[string]*wire.Link{}
		}
		switch {
		case op == twinOpPut && out != nil:
			h.amqpDev.desired[key] = out
		case op == twinOpDelete && h.amqpDev.desired[key] == out:
			delete(h.amqpDev.desired, key)
		}
		h.amqpDev.mu.Unlock()
	default:
		err = azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Unsupported twin operation %q on %q.", op, res)
	}
	if err != nil {
		var he *azurehub.Error
		if !errors.As(err, &he) {
			h.log.Error("twin request over AMQP failed", "deviceId", id, "err", err)
			he = azurehub.Errorf(http.StatusInternalServerError, azurehub.CodeServerError, "Internal error.")
		}
		status = he.StatusCode
		body, _ = json.Marshal(map[string]any{
			"errorCode": status*1000 + 1, "message": he.Message,
			"timestampUtc": h.now().UTC().Format(time.RFC3339Nano),
		})
	}
	ann := map[wire.Symbol]any{"status": int32(status)}
	if version != 0 {
		ann["version"] = version
	}
	reply := &wire.Message{MessageAnnotations: ann, Properties: wire.Properties{CorrelationID: m.Properties.CorrelationID}}
	if body != nil {
		reply.Data = [][]byte{body}
	}
	h.amqpDev.mu.Lock()
	out := h.amqpDev.twinReceiver(in, key)
	h.amqpDev.mu.Unlock()
	if out == nil {
		h.log.Debug("twin request over AMQP without a receiver link", "deviceId", id)
		return
	}
	if err := out.Send(ctx, reply); err != nil {
		h.log.Debug("twin answer over AMQP failed", "deviceId", id, "err", err)
	}
}

// pushDesiredAMQP sends a desired-properties update (the patch with its
// $version, as JSON) to a device that turned updates on over AMQP.
func (h *Hub) pushDesiredAMQP(id string, data []byte, version int64) {
	h.amqpDev.mu.Lock()
	l := h.amqpDev.desired[strings.ToLower(id)]
	h.amqpDev.mu.Unlock()
	if l == nil {
		return
	}
	msg := &wire.Message{MessageAnnotations: map[wire.Symbol]any{"version": version}, Data: [][]byte{data}}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), twinRequestTimeout)
		defer cancel()
		if err := l.Send(ctx, msg); err != nil {
			h.log.Debug("desired properties update over AMQP failed", "deviceId", id, "err", err)
		}
	}()
}

// amqpMethodLink returns the methods receiver link of a device, or nil.
func (h *Hub) amqpMethodLink(id string) *wire.Link {
	h.amqpDev.mu.Lock()
	defer h.amqpDev.mu.Unlock()
	return h.amqpDev.methods[strings.ToLower(id)]
}

// invokeAMQP sends a method call on a device's methods link.
func (h *Hub) invokeAMQP(ctx context.Context, l *wire.Link, name string, rid wire.UUID, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, twinRequestTimeout)
	defer cancel()
	return l.Send(ctx, &wire.Message{
		Properties:            wire.Properties{CorrelationID: rid},
		ApplicationProperties: map[string]any{methodNameProp: name},
		Data:                  [][]byte{payload},
	})
}

// hasAMQPDesired reports whether a device turned desired-property
// updates on over AMQP on this node.
func (h *Hub) hasAMQPDesired(id string) bool {
	h.amqpDev.mu.Lock()
	defer h.amqpDev.mu.Unlock()
	return h.amqpDev.desired[strings.ToLower(id)] != nil
}

// newUUID returns a random (version 4) uuid.
func newUUID() wire.UUID {
	var u wire.UUID
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}
