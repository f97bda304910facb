package builtinhub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/store"
)

// Bounds of cloud-to-device messaging, IoT Hub's.
const (
	// MaxC2DQueue is how many messages wait for one device; a send over
	// it is refused (IoT Hub: 50, DeviceMaximumQueueDepthExceeded).
	MaxC2DQueue = 50
	// MaxC2DBody bounds a message's body (IoT Hub: 64 KiB).
	MaxC2DBody = 64 << 10
	// c2dLock is how long a message received over HTTPS stays locked
	// before it is delivered again (IoT Hub's default, 1 minute).
	c2dLock = time.Minute
	// c2dTTL is a message's default time to live (IoT Hub: 1 hour).
	c2dTTL = time.Hour
	// maxDeliveries is how often a message is delivered before it is
	// dead-lettered (IoT Hub's default max delivery count, 10).
	maxDeliveries = 10
)

// C2DMessage is a cloud-to-device message as a service sends it.
type C2DMessage struct {
	MessageID     string            `json:"messageId,omitempty"`
	CorrelationID string            `json:"correlationId,omitempty"`
	UserID        string            `json:"userId,omitempty"`
	ContentType   string            `json:"contentType,omitempty"`
	ContentEnc    string            `json:"contentEncoding,omitempty"`
	Ack           string            `json:"ack,omitempty"` // none, positive, negative, full
	Expiry        time.Time         `json:"expiryTimeUtc,omitzero"`
	Properties    map[string]string `json:"properties,omitempty"`
	Body          []byte            `json:"body"`
}

// queued is a message waiting in a device's queue.
type queued struct {
	C2DMessage
	device      string // the device id as the sender spelled it
	seq         int64
	enqueued    time.Time
	lockToken   string // set while locked
	lockedUntil time.Time
	deliveries  int
}

// c2dQueues holds the cloud-to-device messages of a hub's devices, one
// store record per device queue, locks included. The store is the truth:
// every change reads the queue's record (memory keeps the copy last read,
// and its etag, so an unchanged record costs one read) and writes it back
// conditionally, again if another node wrote it meanwhile. So nodes
// sharing a store (PostgreSQL) agree on each queue: a message sent through
// one node is delivered by the node the device is connected to, and a
// message locked by one is settled through another. A message locked by a
// connection (MQTT, AMQP) that ends is unlocked at once; one whose node
// crashed becomes visible again when its lock expires.
type c2dQueues struct {
	st  store.Store // nil: memory only (tests)
	hub string
	log *slog.Logger

	// dead receives the messages dropped undelivered (expired, or past
	// their delivery count), with the feedback status; mu is held.
	dead func(m *queued, status string)

	mu     sync.Mutex
	seq    int64
	queues map[string][]*queued // by lower-cased device id
	etags  map[string]string    // of each queue's record as last read or written
}

func newC2DQueues(st store.Store, hub string, log *slog.Logger) *c2dQueues {
	return &c2dQueues{st: st, hub: hub, log: log, queues: map[string][]*queued{}, etags: map[string]string{}}
}

// storedC2D is a waiting message as the store keeps it.
type storedC2D struct {
	C2DMessage
	Device      string    `json:"deviceId,omitempty"`
	Seq         int64     `json:"seq"`
	Enqueued    time.Time `json:"enqueued"`
	Deliveries  int       `json:"deliveries"`
	LockToken   string    `json:"lockToken,omitempty"`
	LockedUntil time.Time `json:"lockedUntil,omitzero"`
}

// c2dAttempts bounds the retries of a queue change that met other nodes'
// changes of the same queue.
const c2dAttempts = 10

// errC2DStore reports a queue that could not be read or written.
func errC2DStore(err error) error {
	return azurehub.Errorf(http.StatusServiceUnavailable, "ServiceUnavailable", "The cloud-to-device queue could not be stored: %v", err)
}

// refresh reads a device's queue from the store, unless the copy in
// memory is current; c.mu is held.
func (c *c2dQueues) refresh(ctx context.Context, key string) error {
	rec, err := c.st.Get(ctx, KindC2D, deviceKey(c.hub, key))
	if errors.Is(err, store.ErrNotFound) {
		delete(c.queues, key)
		delete(c.etags, key)
		return nil
	}
	if err != nil {
		return err
	}
	if rec.ETag == c.etags[key] {
		return nil
	}
	var ms []storedC2D
	if err := json.Unmarshal(rec.Data, &ms); err != nil {
		return fmt.Errorf("cloud-to-device queue %s: %w", rec.ID, err)
	}
	q := make([]*queued, 0, len(ms))
	for _, m := range ms {
		if m.Device == "" {
			m.Device = key
		}
		q = append(q, &queued{C2DMessage: m.C2DMessage, device: m.Device, seq: m.Seq, enqueued: m.Enqueued, deliveries: m.Deliveries,
			lockToken: m.LockToken, lockedUntil: m.LockedUntil})
		c.seq = max(c.seq, m.Seq)
	}
	if len(q) == 0 {
		delete(c.queues, key)
	} else {
		c.queues[key] = q
	}
	c.etags[key] = rec.ETag
	return nil
}

// save writes a device's queue to the store, or removes it when it is
// empty, on condition that nobody wrote it since it was read; c.mu is
// held.
func (c *c2dQueues) save(ctx context.Context, key string) error {
	id := deviceKey(c.hub, key)
	etag := c.etags[key]
	q := c.queues[key]
	if len(q) == 0 {
		if etag == "" {
			return nil
		}
		err := c.st.Delete(ctx, KindC2D, id, store.Condition{IfMatch: etag})
		if errors.Is(err, store.ErrNotFound) {
			err = store.ErrPrecondition // removed by another node meanwhile
		}
		if err == nil {
			delete(c.etags, key)
		}
		return err
	}
	out := make([]storedC2D, len(q))
	for i, m := range q {
		out[i] = storedC2D{C2DMessage: m.C2DMessage, Device: m.device, Seq: m.seq, Enqueued: m.enqueued, Deliveries: m.deliveries,
			LockToken: m.lockToken, LockedUntil: m.lockedUntil}
	}
	data, err := json.Marshal(out)
	if err != nil {
		return err
	}
	cond := store.Condition{IfMatch: etag}
	if etag == "" {
		cond = store.Condition{MustNotExist: true}
	}
	rec, err := c.st.Put(ctx, store.Record{Kind: KindC2D, ID: id, Ref: c.hub, Data: data}, cond)
	if errors.Is(err, store.ErrExists) {
		err = store.ErrPrecondition
	}
	if err == nil {
		c.etags[key] = rec.ETag
	}
	return err
}

// change applies fn to a device's queue as the store has it and writes
// the result back unless fn reports no change, again from the start if
// another node wrote the queue meanwhile. fn gets copies of the messages,
// may change them, and returns the queue; it must change nothing else,
// and report its results through variables it sets afresh on each call.
// The messages it returns as dead are dead-lettered once the change is
// stored. c.mu is held.
func (c *c2dQueues) change(key string, fn func(q []*queued) (out []*queued, changed bool, dead []deadLetter)) error {
	set := func(q []*queued) {
		if len(q) == 0 {
			delete(c.queues, key)
		} else {
			c.queues[key] = q
		}
	}
	if c.st == nil {
		q, _, dead := fn(c.queues[key])
		set(q)
		c.bury(dead)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range c2dAttempts {
		if err := c.refresh(ctx, key); err != nil {
			return err
		}
		kept := c.queues[key]
		q := make([]*queued, len(kept))
		for i, m := range kept {
			cp := *m
			q[i] = &cp
		}
		q, changed, dead := fn(q)
		if !changed {
			return nil
		}
		set(q)
		err := c.save(ctx, key)
		if err == nil {
			c.bury(dead)
			return nil
		}
		set(kept)
		delete(c.etags, key) // read it again
		if !errors.Is(err, store.ErrPrecondition) {
			return err
		}
	}
	return fmt.Errorf("cloud-to-device queue of %s: %d attempts met other changes", key, c2dAttempts)
}

// deadLetter is a message dropped undelivered, with its feedback status.
type deadLetter struct {
	m      *queued
	status string
}

func (c *c2dQueues) bury(dead []deadLetter) {
	for _, d := range dead {
		c.deadLetter(d.m, d.status)
	}
}

// load reads the stored queues of the hub, so that the sequence numbers
// go on after them.
func (c *c2dQueues) load(ctx context.Context) error {
	if c.st == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	opt := store.ListOptions{Ref: c.hub}
	for {
		recs, more, err := c.st.List(ctx, KindC2D, opt)
		if err != nil {
			return fmt.Errorf("cloud-to-device queues: %w", err)
		}
		for _, rec := range recs {
			var ms []storedC2D
			if err := json.Unmarshal(rec.Data, &ms); err != nil {
				return fmt.Errorf("cloud-to-device queue %s: %w", rec.ID, err)
			}
			for _, m := range ms {
				c.seq = max(c.seq, m.Seq)
			}
		}
		if !more || len(recs) == 0 {
			return nil
		}
		opt.After = recs[len(recs)-1].ID
	}
}

// SendC2D queues a message for a device and delivers it at once if the
// device is connected over MQTT and subscribed.
func (h *Hub) SendC2D(ctx context.Context, id string, m *C2DMessage) error {
	if _, err := h.load(ctx, id); err != nil {
		return err
	}
	if len(m.Body) > MaxC2DBody {
		return azurehub.Errorf(http.StatusRequestEntityTooLarge, "MessageTooLarge", "The message body is larger than %d bytes.", MaxC2DBody)
	}
	now := h.now()
	q := &queued{C2DMessage: *m, device: id, enqueued: now}
	if q.MessageID == "" {
		q.MessageID = newToken()
	}
	if q.Expiry.IsZero() {
		q.Expiry = now.Add(c2dTTL)
	}
	h.c2d.mu.Lock()
	key := strings.ToLower(id)
	full := false
	err := h.c2d.change(key, func(qs []*queued) ([]*queued, bool, []deadLetter) {
		qs, dead := expireQueue(qs, now)
		if full = len(qs) >= MaxC2DQueue; full {
			return qs, len(dead) > 0, dead
		}
		h.c2d.seq++
		q.seq = h.c2d.seq
		return append(qs, q), true, dead
	})
	h.c2d.mu.Unlock()
	if err != nil {
		h.log.Warn("cloud-to-device message not queued", "deviceId", id, "err", err)
		return errC2DStore(err)
	}
	if full {
		return azurehub.Errorf(http.StatusForbidden, "DeviceMaximumQueueDepthExceeded", "Device %s already has %d messages waiting.", id, MaxC2DQueue)
	}
	h.announceC2D(id)
	h.log.Debug("cloud-to-device message queued", "deviceId", id, "messageId", q.MessageID)
	h.deliverC2D(id)
	return nil
}

// Feedback status codes and descriptions, IoT Hub's.
const (
	statusSuccess       = "Success"
	statusExpired       = "Expired"
	statusDeliveryCount = "DeliveryCountExceeded"
	statusRejected      = "Rejected"
)

var statusDescription = map[string]string{
	statusSuccess:       "Success",
	statusExpired:       "Message expired",
	statusDeliveryCount: "Message delivery count exceeded",
	statusRejected:      "Message rejected",
}

// expireQueue drops the messages of a queue that expired, or that are
// visible again after their last allowed delivery, and returns them as
// dead letters.
func expireQueue(q []*queued, now time.Time) ([]*queued, []deadLetter) {
	var dead []deadLetter
	kept := q[:0:0]
	for _, m := range q {
		locked := m.lockToken != "" && now.Before(m.lockedUntil)
		switch {
		case !now.Before(m.Expiry):
			dead = append(dead, deadLetter{m, statusExpired})
		case !locked && m.deliveries >= maxDeliveries:
			dead = append(dead, deadLetter{m, statusDeliveryCount})
		default:
			kept = append(kept, m)
		}
	}
	return kept, dead
}

// expire dead-letters the expired messages of a queue; mu is held.
func (c *c2dQueues) expire(key string, now time.Time) {
	if err := c.change(key, func(q []*queued) ([]*queued, bool, []deadLetter) {
		q, dead := expireQueue(q, now)
		return q, len(dead) > 0, dead
	}); err != nil {
		c.log.Warn("cloud-to-device queue not expired", "deviceId", key, "err", err)
	}
}

// deadLetter reports a message dropped undelivered; mu is held.
func (c *c2dQueues) deadLetter(m *queued, status string) {
	c.log.Debug("cloud-to-device message dead-lettered", "deviceId", m.device, "messageId", m.MessageID, "status", status)
	if c.dead != nil {
		c.dead(m, status)
	}
}

// next locks the oldest message of a device that is not locked and
// returns it, or nil.
func (c *c2dQueues) next(id string, now time.Time) *queued {
	c.mu.Lock()
	defer c.mu.Unlock()
	var got *queued
	err := c.change(strings.ToLower(id), func(q []*queued) ([]*queued, bool, []deadLetter) {
		got = nil
		q, dead := expireQueue(q, now)
		for _, m := range q {
			if m.lockToken != "" && now.Before(m.lockedUntil) {
				continue
			}
			// The delivery count is stored with the lock: it bounds
			// redeliveries.
			m.lockToken, m.lockedUntil = newToken(), now.Add(c2dLock)
			m.deliveries++
			cp := *m
			got = &cp
			break
		}
		return q, got != nil || len(dead) > 0, dead
	})
	if err != nil {
		c.log.Warn("cloud-to-device message not delivered", "deviceId", id, "err", err)
		return nil
	}
	return got
}

// c2dOutcome is how a device settles a message it received.
type c2dOutcome int

const (
	c2dComplete c2dOutcome = iota // done: removed
	c2dReject                     // refused: removed, dead-lettered
	c2dAbandon                    // not now: visible again
)

// settle applies outcome o to the message locked with lockToken and
// returns it, and whether an abandoned message was its last allowed
// delivery (and is dead-lettered); nil if no message holds that lock.
func (c *c2dQueues) settle(id, lockToken string, o c2dOutcome, now time.Time) (*queued, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var got *queued
	var dead bool
	err := c.change(strings.ToLower(id), func(q []*queued) ([]*queued, bool, []deadLetter) {
		got, dead = nil, false
		for i, m := range q {
			if m.lockToken != lockToken || lockToken == "" || !now.Before(m.lockedUntil) {
				continue
			}
			dead = o == c2dAbandon && m.deliveries >= maxDeliveries
			if o == c2dAbandon && !dead {
				m.lockToken, m.lockedUntil = "", time.Time{}
				cp := *m
				got = &cp
				return q, true, nil
			}
			got = m
			return append(q[:i:i], q[i+1:]...), true, nil
		}
		return q, false, nil
	})
	if err != nil {
		c.log.Warn("cloud-to-device message not settled", "deviceId", id, "err", err)
		return nil, false
	}
	return got, dead
}

// settleC2D applies a device's settlement of the message it holds with
// lockToken, sends the feedback the message asked for, and offers an
// abandoned message again to a device connected over MQTT or AMQP. It
// reports whether a message held that lock.
func (h *Hub) settleC2D(id, lockToken string, o c2dOutcome) bool {
	m, dead := h.c2d.settle(id, lockToken, o, h.now())
	if m == nil {
		return false
	}
	switch {
	case o == c2dComplete:
		h.feedback(m, statusSuccess)
	case o == c2dReject:
		h.feedback(m, statusRejected)
	case dead:
		h.feedback(m, statusDeliveryCount)
	default:
		go h.deliverC2D(id)
	}
	h.log.Debug("cloud-to-device message settled", "deviceId", id, "messageId", m.MessageID, "outcome", o, "deliveries", m.deliveries)
	return true
}

// drop forgets a deleted device's messages.
func (c *c2dQueues) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.change(strings.ToLower(id), func(q []*queued) ([]*queued, bool, []deadLetter) {
		return nil, len(q) > 0, nil
	}); err != nil {
		c.log.Warn("a deleted device's cloud-to-device queue not removed", "deviceId", id, "err", err)
	}
}

// deliverC2D sends a device's waiting messages over its MQTT connection,
// when it has one subscribed to its cloud-to-device topic, or else its
// AMQP link. Over MQTT a message is complete when the device acknowledges
// it (PUBACK; at once for a QoS 0 subscription), as on IoT Hub; over
// AMQP the device's disposition settles it.
func (h *Hub) deliverC2D(id string) {
	cl := h.client(id)
	filter := "devices/" + id + "/messages/devicebound/#"
	if cl != nil {
		filter = "devices/" + cl.ID + "/messages/devicebound/#"
	}
	sub, ok := packets.Subscription{}, false
	if cl != nil {
		sub, ok = cl.State.Subscriptions.Get(filter)
	}
	if !ok {
		if l := h.amqpC2DLink(id); l != nil {
			h.deliverAMQP(id, l)
		}
		return
	}
	for range MaxC2DQueue {
		m := h.c2d.next(id, h.now())
		if m == nil {
			return
		}
		topic := "devices/" + cl.ID + "/messages/devicebound/" + c2dPropertyBag(id, m)
		if sub.Qos == 0 {
			h.writeTo(cl, topic, m.Body)
			h.settleC2D(id, m.lockToken, c2dComplete)
			continue
		}
		if err := h.publishC2D(cl, topic, m); err != nil {
			h.log.Debug("cloud-to-device message not sent over MQTT", "deviceId", id, "err", err)
			h.c2d.settle(id, m.lockToken, c2dAbandon, h.now())
			return
		}
	}
}

// publishC2D sends a message at QoS 1: the device's PUBACK completes it
// (OnPacketRead), and a connection that ends first abandons it
// (OnDisconnect), so the device's next connection gets it again. The
// hub keeps these in-flight messages itself: the broker's own in-flight
// table shares packet ids with the device's publishes and would take a
// device's telemetry for the PUBACK of a message with the same id.
func (h *Hub) publishC2D(cl *mqtt.Client, topic string, m *queued) error {
	h.mu.Lock()
	if h.mqttC2D == nil {
		h.mqttC2D = map[mqttInflight]string{}
	}
	var k mqttInflight
	for range 1 << 16 {
		h.mqttPacketID++
		if h.mqttPacketID == 0 {
			h.mqttPacketID = 1
		}
		k = mqttInflight{cl, h.mqttPacketID}
		if _, used := h.mqttC2D[k]; !used {
			break
		}
	}
	if _, used := h.mqttC2D[k]; used {
		h.mu.Unlock()
		return errors.New("no free packet id")
	}
	h.mqttC2D[k] = m.lockToken
	h.mu.Unlock()
	err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   topic,
		Payload:     m.Body,
		PacketID:    k.packet,
	})
	if err != nil {
		h.mu.Lock()
		delete(h.mqttC2D, k)
		h.mu.Unlock()
	}
	return err
}

// mqttInflight names a cloud-to-device message in flight on one MQTT
// connection.
type mqttInflight struct {
	cl     *mqtt.Client
	packet uint16
}

// mqttC2DAcked completes the message a device's PUBACK answered.
func (h *Hub) mqttC2DAcked(cl *mqtt.Client, pid uint16) {
	k := mqttInflight{cl, pid}
	h.mu.Lock()
	lock, ok := h.mqttC2D[k]
	delete(h.mqttC2D, k)
	h.mu.Unlock()
	if ok {
		h.settleC2D(cl.ID, lock, c2dComplete)
	}
}

// mqttC2DEnded abandons the messages still in flight on a connection
// that ended.
func (h *Hub) mqttC2DEnded(cl *mqtt.Client) {
	var locks []string
	h.mu.Lock()
	for k, lock := range h.mqttC2D {
		if k.cl == cl {
			locks = append(locks, lock)
			delete(h.mqttC2D, k)
		}
	}
	h.mu.Unlock()
	for _, lock := range locks {
		h.settleC2D(cl.ID, lock, c2dAbandon)
	}
}

// c2dPropertyBag is the topic's property bag of a message: system
// properties as "$.xx" keys, then the application properties.
func c2dPropertyBag(id string, m *queued) string {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("$.mid", m.MessageID)
	set("$.cid", m.CorrelationID)
	set("$.uid", m.UserID)
	set("$.ct", m.ContentType)
	set("$.ce", m.ContentEnc)
	set("$.to", "/devices/"+id+"/messages/deviceBound")
	if !m.Expiry.IsZero() {
		set("$.exp", m.Expiry.UTC().Format(time.RFC3339))
	}
	keys := make([]string, 0, len(m.Properties))
	for k := range m.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v.Set(k, m.Properties[k])
	}
	return strings.ReplaceAll(v.Encode(), "+", "%20")
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// addAMQPC2D records a device's AMQP cloud-to-device link (the newest
// wins) and delivers what waits.
func (h *Hub) addAMQPC2D(id string, l *wire.Link) {
	h.mu.Lock()
	if h.amqpC2D == nil {
		h.amqpC2D = map[string]*wire.Link{}
	}
	h.amqpC2D[strings.ToLower(id)] = l
	h.mu.Unlock()
	go h.deliverC2D(id)
}

func (h *Hub) removeAMQPC2D(id string, l *wire.Link) {
	h.mu.Lock()
	if h.amqpC2D[strings.ToLower(id)] == l {
		delete(h.amqpC2D, strings.ToLower(id))
	}
	h.mu.Unlock()
}

func (h *Hub) amqpC2DLink(id string) *wire.Link {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.amqpC2D[strings.ToLower(id)]
}

// deliverAMQP sends a device's waiting messages on its AMQP link,
// unsettled: the device's disposition completes (accepted), rejects
// (rejected) or abandons (released, modified) each. A message the device
// leaves unsettled for the lock's duration, or whose link ends, is
// abandoned.
func (h *Hub) deliverAMQP(id string, l *wire.Link) {
	for range MaxC2DQueue {
		m := h.c2d.next(id, h.now())
		if m == nil {
			return
		}
		app := map[string]any{}
		for k, v := range m.Properties {
			app[k] = v
		}
		msg := &wire.Message{
			Properties: wire.Properties{MessageID: m.MessageID, To: "/devices/" + id + "/messages/deviceBound",
				CorrelationID: nilIfEmpty(m.CorrelationID), ContentType: wire.Symbol(m.ContentType)},
			ApplicationProperties: app,
			Data:                  [][]byte{m.Body},
		}
		ctx, cancel := context.WithTimeout(context.Background(), c2dLock)
		outcome, err := l.SendUnsettled(ctx, msg)
		if err != nil {
			cancel()
			h.log.Debug("cloud-to-device message not sent over AMQP", "deviceId", id, "err", err)
			h.c2d.settle(id, m.lockToken, c2dAbandon, h.now())
			return
		}
		go func() {
			defer cancel()
			select {
			case o := <-outcome:
				switch o {
				case wire.OutcomeAccepted:
					h.settleC2D(id, m.lockToken, c2dComplete)
				case wire.OutcomeRejected:
					h.settleC2D(id, m.lockToken, c2dReject)
				default: // released, modified
					h.settleC2D(id, m.lockToken, c2dAbandon)
				}
			case <-l.Done():
				// Visible again for the device's next link, not
				// offered on this one.
				h.c2d.settle(id, m.lockToken, c2dAbandon, h.now())
			case <-ctx.Done():
				// The lock expired: the message is visible again.
				go h.deliverC2D(id)
			}
		}()
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
