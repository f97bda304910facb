package builtinhub

import (
	"encoding/base64"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// DefaultMessageBuffer is how many device-to-cloud messages a hub keeps.
const DefaultMessageBuffer = 1000

// Message is a device-to-cloud (telemetry) message a hub received.
type Message struct {
	// SequenceNumber increases with each message a hub receives.
	SequenceNumber int64     `json:"sequenceNumber"`
	DeviceID       string    `json:"deviceId"`
	EnqueuedTime   time.Time `json:"enqueuedTime"`
	// SystemProperties are the "$."-prefixed properties of the topic's
	// property bag, by their Azure names (messageId, contentType, …).
	SystemProperties map[string]string `json:"systemProperties,omitempty"`
	// Properties are the application properties.
	Properties map[string]string `json:"properties,omitempty"`
	// Body is the payload as text, or base64 when BodyEncoding says so.
	Body         string `json:"body"`
	BodyEncoding string `json:"bodyEncoding,omitempty"`
}

// systemPropertyNames maps the property-bag keys of system properties to
// their names in Azure's message model.
var systemPropertyNames = map[string]string{
	"$.mid":  "messageId",
	"$.cid":  "correlationId",
	"$.uid":  "userId",
	"$.to":   "to",
	"$.exp":  "absoluteExpiryTime",
	"$.ct":   "contentType",
	"$.ce":   "contentEncoding",
	"$.ifid": "interfaceId",
	"$.on":   "outputName",
	"$.sub":  "dt-subject",
}

// messageBuffer keeps the most recent messages of a hub in a ring, so
// adding one costs the same however full it is.
type messageBuffer struct {
	mu   sync.Mutex
	max  int
	seq  int64
	msgs []Message // grows to max, then wraps at next
	next int       // where the next message goes once full; also the oldest
}

func newMessageBuffer(n int) *messageBuffer {
	if n <= 0 {
		n = DefaultMessageBuffer
	}
	return &messageBuffer{max: n}
}

func (b *messageBuffer) add(m Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	m.SequenceNumber = b.seq
	if len(b.msgs) < b.max {
		b.msgs = append(b.msgs, m)
		return
	}
	b.msgs[b.next] = m
	b.next = (b.next + 1) % b.max
}

// list returns up to limit messages after sequence number after, oldest
// first, for one device if deviceID is not empty.
func (b *messageBuffer) list(deviceID string, after int64, limit int) []Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []Message{}
	for i := range b.msgs {
		m := b.msgs[(b.next+i)%len(b.msgs)]
		if m.SequenceNumber <= after || (deviceID != "" && !strings.EqualFold(m.DeviceID, deviceID)) {
			continue
		}
		out = append(out, m)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out
}

// Messages returns up to limit telemetry messages the hub keeps, oldest
// first, after sequence number after, for one device if deviceID is set.
func (h *Hub) Messages(deviceID string, after int64, limit int) []Message {
	return h.msgs.list(deviceID, after, limit)
}

// recordTelemetry keeps a message published on
// devices/{id}/messages/events/{property bag}.
func (h *Hub) recordTelemetry(id, topic string, payload []byte) {
	_, bag, _ := strings.Cut(topic, "/messages/events")
	bag = strings.TrimPrefix(bag, "/")
	m := Message{DeviceID: id, EnqueuedTime: h.now().UTC()}
	for part := range strings.SplitSeq(bag, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		if dk, err := url.PathUnescape(k); err == nil {
			k = dk
		}
		if dv, err := url.PathUnescape(v); err == nil {
			v = dv
		}
		if name, ok := systemPropertyNames[k]; ok {
			if m.SystemProperties == nil {
				m.SystemProperties = map[string]string{}
			}
			m.SystemProperties[name] = v
			continue
		}
		if m.Properties == nil {
			m.Properties = map[string]string{}
		}
		m.Properties[k] = v
	}
	if utf8.Valid(payload) {
		m.Body = string(payload)
	} else {
		m.Body, m.BodyEncoding = base64.StdEncoding.EncodeToString(payload), "base64"
	}
	h.msgs.add(m)
	h.log.Debug("telemetry received", "deviceId", id, "bytes", len(payload))
}
