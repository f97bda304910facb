package builtinhub

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
)

// The device HTTPS API (what the C SDK's and the Node SDK's HTTP
// transports use):
//
//	POST   /devices/{id}/messages/events                         telemetry (one message, or a batch)
//	GET    /devices/{id}/messages/deviceBound                    receive a cloud-to-device message (204: none)
//	DELETE /devices/{id}/messages/deviceBound/{lockToken}        complete ("?reject": reject)
//	POST   /devices/{id}/messages/deviceBound/{lockToken}/abandon abandon
//
// Twins and methods are not on HTTPS, as on IoT Hub.

// batchContentType marks a batch of telemetry messages in one request.
const batchContentType = "application/vnd.microsoft.iothub.json"

// maxTelemetry bounds one device-to-cloud message (IoT Hub: 256 KiB).
const maxTelemetry = 256 << 10

// deviceRoute returns the handler of a device API request, or nil.
func (h *Hub) deviceRoute(method string, segs []string) restHandler {
	if len(segs) < 4 || segs[0] != "devices" || segs[2] != "messages" {
		return nil
	}
	switch {
	case len(segs) == 4 && segs[3] == "events" && method == http.MethodPost:
		return h.deviceTelemetry
	case len(segs) == 4 && strings.EqualFold(segs[3], "deviceBound") && method == http.MethodGet:
		return h.deviceReceive
	case len(segs) == 5 && strings.EqualFold(segs[3], "deviceBound") && method == http.MethodDelete:
		return h.deviceSettle
	case len(segs) == 6 && strings.EqualFold(segs[3], "deviceBound") && segs[5] == "abandon" && method == http.MethodPost:
		return h.deviceSettle
	}
	return nil
}

// authorizeDevice checks a device request: the device's SAS token (or a
// policy's with DeviceConnect) in Authorization, or its TLS client
// certificate.
func (h *Hub) authorizeDevice(ctx context.Context, r *http.Request, id string) error {
	var peers []*x509.Certificate
	if r.TLS != nil {
		peers = r.TLS.PeerCertificates
	}
	err := h.authenticateDevice(ctx, id, h.cfg.HostName+"/"+id+"/", r.Header.Get("Authorization"), peers)
	if err == nil {
		return nil
	}
	var he *azurehub.Error
	if errors.As(err, &he) && he.StatusCode != http.StatusNotFound {
		return err
	}
	var sf *storeFailure
	if errors.As(err, &sf) {
		return err
	}
	return azurehub.Errorf(http.StatusUnauthorized, azurehub.CodeUnauthorized, "Device %s is not authorized: %v", id, err)
}

// wireMessage is one message of a telemetry batch. Its body is base64
// unless base64Encoded is false: the Node SDK sends base64 bodies without
// the flag.
type wireMessage struct {
	Body          string            `json:"body"`
	Base64Encoded *bool             `json:"base64Encoded"`
	Properties    map[string]string `json:"properties"`
}

func (h *Hub) deviceTelemetry(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	id := segs[1]
	body, err := io.ReadAll(io.LimitReader(r.Body, 64*maxTelemetry+1))
	if err != nil {
		h.writeError(w, reqID, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "Reading the body: %v", err))
		return
	}
	ct := r.Header.Get("Content-Type")
	if strings.HasPrefix(ct, batchContentType) {
		var batch []wireMessage
		if err := json.Unmarshal(body, &batch); err != nil {
			h.writeError(w, reqID, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "The batch is not a JSON array of messages: %v", err))
			return
		}
		msgs := make([]Message, 0, len(batch))
		for _, b := range batch {
			payload := []byte(b.Body)
			if b.Base64Encoded == nil || *b.Base64Encoded {
				if payload, err = base64.StdEncoding.DecodeString(b.Body); err != nil {
					h.writeError(w, reqID, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid, "A batch message's body is not base64: %v", err))
					return
				}
			}
			if len(payload) > maxTelemetry {
				h.writeError(w, reqID, azurehub.Errorf(http.StatusRequestEntityTooLarge, "MessageTooLarge", "A message is larger than %d bytes.", maxTelemetry))
				return
			}
			msgs = append(msgs, h.httpMessage(id, b.Properties, payload))
		}
		if err := h.keepTelemetry(msgs...); err != nil {
			h.writeError(w, reqID, telemetryNotStored(err))
			return
		}
	} else {
		if len(body) > maxTelemetry {
			h.writeError(w, reqID, azurehub.Errorf(http.StatusRequestEntityTooLarge, "MessageTooLarge", "The message is larger than %d bytes.", maxTelemetry))
			return
		}
		if err := h.keepTelemetry(h.httpMessage(id, headerProperties(r.Header), body)); err != nil {
			h.writeError(w, reqID, telemetryNotStored(err))
			return
		}
	}
	h.touch(id)
	w.WriteHeader(http.StatusNoContent)
}

// httpSystemHeaders maps the device HTTPS API's headers to system
// properties.
var httpSystemHeaders = map[string]string{
	"Iothub-Messageid":       "messageId",
	"Iothub-Correlationid":   "correlationId",
	"Iothub-Userid":          "userId",
	"Iothub-To":              "to",
	"Iothub-Expiry":          "absoluteExpiryTime",
	"Iothub-Contenttype":     "contentType",
	"Iothub-Contentencoding": "contentEncoding",
	"Iothub-Interface-Id":    "interfaceId",
}

// headerProperties are a request's headers as message properties: the
// names lower-cased, as HTTP/2 sends them and Go's header map does not
// keep them.
func headerProperties(hdr http.Header) map[string]string {
	out := make(map[string]string, len(hdr))
	for k, vs := range hdr {
		if len(vs) > 0 {
			out[strings.ToLower(k)] = vs[0]
		}
	}
	return out
}

// httpMessage is the telemetry message of a device request's properties
// (iothub-* headers, or a batch member's properties: iothub-app-* are
// application properties) and body.
func (h *Hub) httpMessage(id string, props map[string]string, payload []byte) Message {
	dev, mod, _ := strings.Cut(id, "/") // a module is device/module
	m := Message{DeviceID: dev, ModuleID: mod, EnqueuedTime: h.now().UTC()}
	const app = "iothub-app-"
	for k, v := range props {
		if name, ok := httpSystemHeaders[http.CanonicalHeaderKey(k)]; ok {
			if m.SystemProperties == nil {
				m.SystemProperties = map[string]string{}
			}
			m.SystemProperties[name] = v
			continue
		}
		if len(k) > len(app) && strings.EqualFold(k[:len(app)], app) {
			if m.Properties == nil {
				m.Properties = map[string]string{}
			}
			m.Properties[k[len(app):]] = v
		}
	}
	if utf8.Valid(payload) {
		m.Body = string(payload)
	} else {
		m.Body, m.BodyEncoding = base64.StdEncoding.EncodeToString(payload), "base64"
	}
	return m
}

func (h *Hub) deviceReceive(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	id := segs[1]
	h.touch(id)
	m := h.c2d.next(id, h.now())
	if m == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	hd := w.Header()
	hd.Set("ETag", `"`+m.lockToken+`"`)
	hd.Set("iothub-messageid", m.MessageID)
	hd.Set("iothub-sequencenumber", strconv.FormatInt(m.seq, 10))
	hd.Set("iothub-to", "/devices/"+id+"/messages/deviceBound")
	hd.Set("iothub-deliverycount", strconv.Itoa(m.deliveries-1))
	hd.Set("iothub-enqueuedtime", m.enqueued.UTC().Format("2006-01-02T15:04:05.000Z"))
	if !m.Expiry.IsZero() {
		hd.Set("iothub-expiry", m.Expiry.UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	if m.CorrelationID != "" {
		hd.Set("iothub-correlationid", m.CorrelationID)
	}
	if m.UserID != "" {
		hd.Set("iothub-userid", m.UserID)
	}
	if m.ContentType != "" {
		hd.Set("Content-Type", m.ContentType)
	}
	for k, v := range m.Properties {
		hd.Set("iothub-app-"+k, v)
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(m.Body)
}

// deviceSettle completes, rejects or abandons a received message: the
// lock is its ETag.
func (h *Hub) deviceSettle(w http.ResponseWriter, r *http.Request, reqID string, segs []string) {
	id, lock := segs[1], strings.Trim(segs[4], `"`)
	o := c2dAbandon
	if r.Method == http.MethodDelete {
		o = c2dComplete
		if r.URL.Query().Has("reject") {
			o = c2dReject
		}
	}
	if !h.settleC2D(id, lock, o) {
		h.writeError(w, reqID, azurehub.Errorf(http.StatusPreconditionFailed, "DeviceMessageLockLost", "No message of device %s is locked with %s.", id, lock))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// telemetryNotStored is the answer to a device whose telemetry could not
// be stored: 503, so that it sends the message again.
func telemetryNotStored(err error) error {
	return azurehub.Errorf(http.StatusServiceUnavailable, "ServiceUnavailable", "The message could not be stored: %v", err)
}
