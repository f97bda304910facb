package builtinhub

import (
	"context"
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
	SequenceNumber int64  `json:"sequenceNumber"`
	DeviceID       string `json:"deviceId"`
	// ModuleID is set for a module's message.
	ModuleID     string    `json:"moduleId,omitempty"`
	EnqueuedTime time.Time `json:"enqueuedTime"`
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

// DefaultMessageBufferBytes is how many bytes of device-to-cloud messages
// a hub keeps, whatever their number: 1,000 messages of 256 KiB would
// otherwise hold a quarter of a gigabyte.
const DefaultMessageBufferBytes = 64 << 20

// maxListBytes bounds one page of a message listing; a client pages on
// with the last sequence number it got.
const maxListBytes = 4 << 20

// messageBuffer keeps the most recent messages of a hub, at most max of
// them, at most maxBytes of them (the newest is always kept) and, when
// maxAge is set, none older than maxAge.
type messageBuffer struct {
	mu       sync.Mutex
	max      int
	maxBytes int
	maxAge   time.Duration
	now      func() time.Time
	seq      int64
	msgs     []keptMessage // oldest first
	bytes    int
	// added is closed (and replaced) when a message is added: followers
	// of the telemetry wait on it.
	added chan struct{}
	// parts is the state of the Event Hubs-compatible endpoint's
	// partitions (eventhub.go).
	parts []partitionState
	// durable is set when every message is also a record in the store
	// (telemetryLog); dropped then holds the sequence numbers of the
	// messages the buffer let go, whose records the log deletes with its
	// next write.
	durable bool
	dropped []int64
}

type keptMessage struct {
	Message
	size int
	// partition and partSeq place the message in the Event Hubs-compatible
	// endpoint: its partition and its sequence number there.
	partition int
	partSeq   int64
}

// size is what m costs in the buffer, roughly: its strings, plus a fixed
// overhead for the rest.
func size(m Message) int {
	n := 128 + len(m.DeviceID) + len(m.Body)
	for k, v := range m.Properties {
		n += len(k) + len(v) + 32
	}
	for k, v := range m.SystemProperties {
		n += len(k) + len(v) + 32
	}
	return n
}

func newMessageBuffer(n, maxBytes int, maxAge time.Duration, now func() time.Time) *messageBuffer {
	if n <= 0 {
		n = DefaultMessageBuffer
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMessageBufferBytes
	}
	if now == nil {
		now = time.Now
	}
	return &messageBuffer{max: n, maxBytes: maxBytes, maxAge: max(maxAge, 0), now: now, added: make(chan struct{})}
}

// expire drops the messages older than maxAge; b.mu is held.
func (b *messageBuffer) expire() {
	if b.maxAge == 0 {
		return
	}
	cutoff := b.now().Add(-b.maxAge)
	drop := 0
	for drop < len(b.msgs) && b.msgs[drop].EnqueuedTime.Before(cutoff) {
		drop++
	}
	b.dropFirst(drop)
}

// maxDropped bounds the deletes a buffer owes the store: past it the
// oldest are forgotten, and their records wait for the bounds a start
// applies (loadTelemetry).
const maxDropped = 100_000

// dropFirst drops the n oldest messages; b.mu is held.
func (b *messageBuffer) dropFirst(n int) {
	if n <= 0 {
		return
	}
	for _, m := range b.msgs[:n] {
		b.bytes -= m.size
		if b.durable {
			b.dropped = append(b.dropped, m.SequenceNumber)
		}
	}
	if len(b.dropped) > maxDropped {
		b.dropped = append(b.dropped[:0:0], b.dropped[len(b.dropped)-maxDropped:]...)
	}
	// Cleared, so the backing array does not hold the dropped messages'
	// bodies; the next growth of the slice copies only the messages kept,
	// so a full buffer costs no copy of itself per message.
	clear(b.msgs[:n])
	b.msgs = b.msgs[n:]
	if len(b.msgs) == 0 {
		b.msgs = nil
	}
}

// trim applies the bounds by count and bytes (the newest message is
// always kept) and by age; b.mu is held.
func (b *messageBuffer) trim() {
	b.expire()
	drop, bytes := 0, b.bytes
	for len(b.msgs)-drop > b.max || (bytes > b.maxBytes && len(b.msgs)-drop > 1) {
		bytes -= b.msgs[drop].size
		drop++
	}
	b.dropFirst(drop)
}

// changed returns a channel closed when the next message is added.
func (b *messageBuffer) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.added
}

func (b *messageBuffer) add(m Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	m.SequenceNumber = b.seq
	km := keptMessage{Message: m, size: size(m)}
	b.place(&km)
	b.msgs = append(b.msgs, km)
	b.bytes += km.size
	b.trim()
	close(b.added)
	b.added = make(chan struct{})
}

// list returns up to limit messages after sequence number after, oldest
// first, for one device if deviceID is not empty, and no more than
// maxBytes of them (but at least one).
func (b *messageBuffer) list(deviceID string, after int64, limit, maxBytes int) []Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire()
	out := []Message{}
	bytes := 0
	for _, m := range b.msgs {
		if m.SequenceNumber <= after || (deviceID != "" && !strings.EqualFold(m.DeviceID, deviceID)) {
			continue
		}
		if len(out) > 0 && maxBytes > 0 && bytes+m.size > maxBytes {
			break
		}
		out = append(out, m.Message)
		bytes += m.size
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out
}

// Messages returns up to limit telemetry messages the hub keeps, oldest
// first, after sequence number after, for one device if deviceID is set:
// one page, of at most 4 MiB of messages. The next page starts after the
// last sequence number of this one.
func (h *Hub) Messages(deviceID string, after int64, limit int) []Message {
	return h.msgs.list(deviceID, after, limit, maxListBytes)
}

// WaitMessages is Messages, but when there are none yet it waits until one
// comes or ctx ends (then it returns none): a long poll that follows the
// telemetry live.
func (h *Hub) WaitMessages(ctx context.Context, deviceID string, after int64, limit int) []Message {
	for {
		ch := h.msgs.changed()
		if msgs := h.Messages(deviceID, after, limit); len(msgs) > 0 {
			return msgs
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return []Message{}
		}
	}
}

// recordTelemetry keeps a message published on
// devices/{id}/messages/events/{property bag}; it returns once the message
// is durable, or with the error that kept it from being so.
func (h *Hub) recordTelemetry(id, topic string, payload []byte) error {
	_, bag, _ := strings.Cut(topic, "/messages/events")
	bag = strings.TrimPrefix(bag, "/")
	dev, mod, _ := strings.Cut(id, "/") // a module's client id is device/module
	m := Message{DeviceID: dev, ModuleID: mod, EnqueuedTime: h.now().UTC()}
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
	if err := h.keepTelemetry(m); err != nil {
		return err
	}
	h.log.Debug("telemetry received", "deviceId", id, "bytes", len(payload))
	return nil
}
