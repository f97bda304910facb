package builtinhub

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/dpsd/dpsd/internal/store"
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
		b.bytes -= b.msgs[drop].size
		drop++
	}
	if drop > 0 {
		b.msgs = append(b.msgs[:0:0], b.msgs[drop:]...)
	}
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
	b.expire()
	drop := 0
	for len(b.msgs)-drop > b.max || (b.bytes > b.maxBytes && len(b.msgs)-drop > 1) {
		b.bytes -= b.msgs[drop].size
		drop++
	}
	if drop > 0 {
		// Copying keeps the backing array from holding the dropped
		// messages' bodies; it costs what the buffer holds, and happens
		// only when it is full.
		b.msgs = append(b.msgs[:0:0], b.msgs[drop:]...)
	}
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
// devices/{id}/messages/events/{property bag}.
func (h *Hub) recordTelemetry(id, topic string, payload []byte) {
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
	h.msgs.add(m)
	h.log.Debug("telemetry received", "deviceId", id, "bytes", len(payload))
}

// KindTelemetry holds the telemetry a hub kept when dpsd stopped; id = hub
// name, Ref = hub name.
const KindTelemetry = store.KindHubTelemetry

// telemetrySnapshot is a hub's telemetry as kept over a restart.
type telemetrySnapshot struct {
	Sequence int64     `json:"sequence"` // the last sequence number given
	Messages []Message `json:"messages"`
}

// saveTelemetry writes what the buffer keeps to the store, so that a
// restart keeps it (a crash loses what came since the last stop).
func (h *Hub) saveTelemetry(ctx context.Context) error {
	b := h.msgs
	b.mu.Lock()
	b.expire()
	snap := telemetrySnapshot{Sequence: b.seq, Messages: make([]Message, 0, len(b.msgs))}
	for _, m := range b.msgs {
		snap.Messages = append(snap.Messages, m.Message)
	}
	b.mu.Unlock()
	data, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encode telemetry: %w", err)
	}
	_, err = h.st.Put(ctx, store.Record{Kind: KindTelemetry, ID: h.cfg.Name, Ref: h.cfg.Name, Data: data}, store.Condition{})
	return err
}

// loadTelemetry restores the telemetry kept at the last stop, within the
// buffer's bounds, and continues its sequence numbers.
func (h *Hub) loadTelemetry(ctx context.Context) error {
	rec, err := h.st.Get(ctx, KindTelemetry, h.cfg.Name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read kept telemetry: %w", err)
	}
	var snap telemetrySnapshot
	if err := json.Unmarshal(rec.Data, &snap); err != nil {
		h.log.Warn("kept telemetry unreadable; starting without it", "err", err)
		return nil
	}
	b := h.msgs
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range snap.Messages {
		km := keptMessage{Message: m, size: size(m)}
		// Placed again: the Event Hubs-compatible endpoint's partition
		// sequence numbers start over with a restart; offsets (the hub's
		// sequence numbers) go on.
		b.place(&km)
		b.msgs = append(b.msgs, km)
		b.bytes += km.size
		b.seq = max(b.seq, m.SequenceNumber)
	}
	b.seq = max(b.seq, snap.Sequence)
	b.expire()
	drop := 0
	for len(b.msgs)-drop > b.max || (b.bytes > b.maxBytes && len(b.msgs)-drop > 0) {
		b.bytes -= b.msgs[drop].size
		drop++
	}
	b.msgs = b.msgs[drop:]
	return nil
}
