package builtinhub

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/eventhub"
)

// The Event Hubs-compatible endpoint of a hub (package eventhub) reads the
// hub's telemetry buffer: each message is placed in a partition by its
// device id when it is added, with a sequence number that counts the
// partition's messages from 0; its offset is the hub-wide sequence
// number. What the buffer drops (by count and bytes) the endpoint no
// longer has, as an event hub's retention drops old events.

// partitionState is what a partition keeps beyond its messages: the last
// enqueued event, even once dropped.
type partitionState struct {
	next       int64 // the sequence number of the partition's next message
	lastOffset int64
	lastTime   time.Time
}

// setPartitions sets the partition count; before any message is added.
func (b *messageBuffer) setPartitions(n int) {
	if n <= 0 {
		n = eventhub.DefaultPartitions
	}
	n = min(n, eventhub.MaxPartitions)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.parts = make([]partitionState, n)
}

// place assigns a message its partition and sequence number there; b.mu
// is held.
func (b *messageBuffer) place(km *keptMessage) {
	if len(b.parts) == 0 {
		b.parts = make([]partitionState, eventhub.DefaultPartitions)
	}
	p := eventhub.PartitionOf(km.DeviceID, len(b.parts))
	st := &b.parts[p]
	km.partition, km.partSeq = p, st.next
	st.next++
	st.lastOffset, st.lastTime = km.SequenceNumber, km.EnqueuedTime
}

// eventHubPartitions is the configured partition count, within bounds.
func (m *Manager) eventHubPartitions() int {
	n := m.opt.EventHubPartitions
	if n <= 0 {
		n = eventhub.DefaultPartitions
	}
	return min(n, eventhub.MaxPartitions)
}

// eventSource is a hub as its Event Hubs-compatible endpoint sees it.
type eventSource struct{ h *Hub }

var _ eventhub.Source = eventSource{}

func (s eventSource) Name() string         { return s.h.cfg.Name }
func (s eventSource) CreatedAt() time.Time { return s.h.cfg.Created }

func (s eventSource) Partitions() int {
	b := s.h.msgs
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(len(b.parts), 1)
}

// CheckToken verifies a token signed by one of the hub's policies with
// ServiceConnect (service, iothubowner), as IoT Hub's endpoint takes them.
func (s eventSource) CheckToken(token string) (time.Time, error) {
	// Event Hubs clients sign with the key's text itself, IoT Hub ones
	// with its decoded bytes: both are taken.
	tok, pol, err := s.h.policyToken(token, true)
	if err != nil {
		return time.Time{}, err
	}
	if !pol.has(RightServiceConnect) {
		return time.Time{}, fmt.Errorf("policy %q lacks the %s right", pol.KeyName, RightServiceConnect)
	}
	return time.Unix(tok.Expiry, 0), nil
}

func (s eventSource) Partition(p int) eventhub.PartitionInfo {
	b := s.h.msgs
	b.mu.Lock()
	defer b.mu.Unlock()
	info := eventhub.PartitionInfo{BeginSequenceNumber: -1, LastSequenceNumber: -1, LastOffset: -1, Empty: true}
	if p < 0 || p >= len(b.parts) {
		return info
	}
	st := b.parts[p]
	if st.next == 0 {
		return info
	}
	info.LastSequenceNumber, info.LastOffset, info.LastEnqueuedTime = st.next-1, st.lastOffset, st.lastTime
	info.BeginSequenceNumber = st.next // none kept: the next one
	for _, m := range b.msgs {
		if m.partition == p {
			info.BeginSequenceNumber, info.Empty = m.partSeq, false
			break
		}
	}
	return info
}

func (s eventSource) Events(p int, from int64, limit int) ([]eventhub.Event, <-chan struct{}) {
	b := s.h.msgs
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []eventhub.Event
	bytes := 0
	for _, m := range b.msgs {
		if m.partition != p || m.partSeq < from {
			continue
		}
		if len(out) > 0 && bytes+m.size > maxListBytes {
			break
		}
		out = append(out, toEvent(m))
		bytes += m.size
		if len(out) >= limit {
			break
		}
	}
	return out, b.added
}

// eventAnnotations maps system properties to the message annotations IoT
// Hub gives them on its Event Hubs-compatible endpoint.
var eventAnnotations = map[string]string{
	"interfaceId": "iothub-interface-id",
	"dt-subject":  "dt-subject",
	"outputName":  "iothub-outputname",
}

func toEvent(m keptMessage) eventhub.Event {
	e := eventhub.Event{
		SequenceNumber: m.partSeq,
		Offset:         m.SequenceNumber,
		EnqueuedTime:   m.EnqueuedTime,
		DeviceID:       m.DeviceID,
		ModuleID:       m.ModuleID,
		Properties:     m.Properties,
		Body:           []byte(m.Body),
	}
	if m.BodyEncoding == "base64" {
		if b, err := base64.StdEncoding.DecodeString(m.Body); err == nil {
			e.Body = b
		}
	}
	for k, v := range m.SystemProperties {
		switch k {
		case "messageId":
			e.MessageID = v
		case "correlationId":
			e.CorrelationID = v
		case "userId":
			e.UserID = v
		case "contentType":
			e.ContentType = v
		case "contentEncoding":
			e.ContentEncoding = v
		default:
			if a, ok := eventAnnotations[k]; ok {
				if e.Annotations == nil {
					e.Annotations = map[string]string{}
				}
				e.Annotations[a] = v
			}
		}
	}
	return e
}

// eventHubResolver finds a hub of the manager by its Event Hubs-compatible
// name (the hub's name) and one of its host names or addresses, or by its
// host name alone when entity is empty.
func (m *Manager) eventHubResolver(host, entity string) eventhub.Source {
	var h *Hub
	if entity == "" {
		h = m.byHost(hostOnly(host))
	} else {
		m.mu.Lock()
		h = m.hubs[strings.ToLower(entity)]
		m.mu.Unlock()
	}
	if h == nil || (host != "" && !h.isAlias(host) && !h.isAlias(hostOnly(host))) {
		return nil
	}
	return eventSource{h}
}

// eventHubResolver is the resolver of the connections to the hub's own
// listeners: only the hub itself, by its name and one of its host names
// or addresses.
func (h *Hub) eventHubResolver(host, entity string) eventhub.Source {
	if entity != "" && !strings.EqualFold(entity, h.cfg.Name) {
		return nil
	}
	if host != "" && !h.isAlias(host) && !h.isAlias(hostOnly(host)) {
		return nil
	}
	return eventSource{h}
}

// amqpPort is the port of the hub's AMQP over TLS listener, which its
// Event Hubs-compatible endpoint's redirects name; 0 if unknown.
func (h *Hub) amqpPort() int {
	_, p, err := net.SplitHostPort(h.AMQPAddr())
	if err != nil {
		return 0
	}
	port, _ := strconv.Atoi(p)
	return port
}

// wrapEventHub layers the Event Hubs-compatible endpoint on an AMQP
// connection's handler, over TLS or WebSockets alike. Its redirects name
// the shared AMQP listener's port, which the endpoint's connection
// string also names: a client that asked over WebSockets (on the HTTPS
// port) and follows the redirect over TLS must go there, as IoT Hub's
// redirect names the Event Hubs namespace's AMQP port.
func (m *Manager) wrapEventHub(c *wire.Conn, base wire.LinkHandler, log *slog.Logger) wire.LinkHandler {
	port := 0
	if m.opt.Shared != nil {
		if _, p, err := net.SplitHostPort(m.opt.Shared.AMQPAddr); err == nil {
			port, _ = strconv.Atoi(p)
		}
	}
	return eventhub.Wrap(c, base, m.eventHubResolver, port, log)
}

// EventHubConnectionString is the connection string of the hub's Event
// Hubs-compatible endpoint for a policy (default "service"), as
// `az iot hub connection-string show --default-eventhub` prints it:
// Endpoint=sb://HOST/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=NAME.
// port, when not empty or 5671, goes into the endpoint.
func (c *Config) EventHubConnectionString(policy, port string) (string, error) {
	if policy == "" {
		policy = "service"
	}
	p, ok := c.policy(policy)
	if !ok {
		return "", fmt.Errorf("hub %s has no shared access policy %q", c.Name, policy)
	}
	if !p.has(RightServiceConnect) {
		return "", fmt.Errorf("policy %q lacks the %s right the Event Hubs-compatible endpoint needs", p.KeyName, RightServiceConnect)
	}
	host := c.HostName
	if port != "" && port != "5671" {
		host += ":" + port
	}
	return fmt.Sprintf("Endpoint=sb://%s/;SharedAccessKeyName=%s;SharedAccessKey=%s;EntityPath=%s", host, p.KeyName, p.PrimaryKey, c.Name), nil
}

// eventHubConnectionString is a hub's endpoint connection string with the
// service policy: on its own AMQP listener (h, when it runs) or the
// shared one; "" when there is none to name (a shared hub on a node
// without an AMQP listener, or a hub not running whose port the system
// would pick).
func (m *Manager) eventHubConnectionString(cfg Config, h *Hub) string {
	var port string
	switch {
	case h != nil:
		_, port, _ = net.SplitHostPort(h.AMQPAddr())
	case cfg.Address != "":
		port = m.opt.AMQPPort
	case m.opt.Shared != nil:
		_, port, _ = net.SplitHostPort(m.opt.Shared.AMQPAddr)
	}
	if port == "" || port == "0" {
		return ""
	}
	cs, err := cfg.EventHubConnectionString("", port)
	if err != nil {
		return ""
	}
	return cs
}
