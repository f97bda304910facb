package builtinhub

import (
	"context"
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
// azure-iot-device-amqp, the C SDK) use them: a pair of links on
// /devices/{id}/twin and another on /devices/{id}/methods/devicebound.
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
// correlation id; the device answers on its sender link with the same
// correlation id and IoThub-status.
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
)

// amqpDeviceLinks are the AMQP twin and method links of a hub's devices.
type amqpDeviceLinks struct {
	mu sync.Mutex
	// twinOut is each connection's twin receiver link of a device, where
	// its requests are answered.
	twinOut map[twinLinkKey]*wire.Link
	// desired is the twin receiver link of a device that turned
	// desired-property updates on, by lower-cased id.
	desired map[string]*wire.Link
	// methods is the methods receiver link of a device, by lower-cased
	// id: the newest wins.
	methods map[string]*wire.Link
}

type twinLinkKey struct {
	conn   *wire.Conn
	device string // lower-cased
}

// deviceNode parses /devices/{id}/twin and /devices/{id}/methods/devicebound.
func deviceNode(addr string) (id, node string, ok bool) {
	rest, ok := strings.CutPrefix(addr, "/devices/")
	if !ok {
		return "", "", false
	}
	id, node, ok = strings.Cut(rest, "/")
	if !ok || id == "" {
		return "", "", false
	}
	if u, err := url.PathUnescape(id); err == nil {
		id = u
	}
	node = strings.ToLower(node)
	if node != amqpTwinNode && node != amqpMethodsNode {
		return "", "", false
	}
	return id, node, true
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
			d.twinOut = map[twinLinkKey]*wire.Link{}
		}
		d.twinOut[twinLinkKey{l.Conn(), key}] = l
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
	if k := (twinLinkKey{l.Conn(), key}); d.twinOut[k] == l {
		delete(d.twinOut, k)
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
		h.twinRequestAMQP(ctx, d.Link.Conn(), id, d.Message)
	case amqpMethodsNode:
		m := d.Message
		rid := anyString(m.Properties.CorrelationID)
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

// twinRequestAMQP answers a twin request on the device's twin receiver
// link of the same connection.
func (h *Hub) twinRequestAMQP(ctx context.Context, conn *wire.Conn, id string, m *wire.Message) {
	op := strings.ToUpper(anyString(m.MessageAnnotations["operation"]))
	res := anyString(m.MessageAnnotations["resource"])
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
		if d, err = h.load(ctx, id); err == nil {
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
		out := h.amqpDev.twinOut[twinLinkKey{conn, key}]
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
	out := h.amqpDev.twinOut[twinLinkKey{conn, key}]
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
func (h *Hub) invokeAMQP(ctx context.Context, l *wire.Link, name, rid string, payload []byte) error {
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
