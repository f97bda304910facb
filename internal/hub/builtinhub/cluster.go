package builtinhub

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/store"
)

// Nodes sharing a store (PostgreSQL) each run every hub on their shared
// endpoint, and a device is connected to one of them. What the store
// holds (identities, twins, cloud-to-device queues, feedback) every node
// reads; what a node must do for a device connected to another (deliver a
// message just queued, push a desired-property change) it asks of the
// others with a hubEvent (store.Broadcaster), and the node holding the
// device's connection acts. Events are hints: each says where to look in
// the store, and a node that may have missed some looks at everything its
// devices hold.

// The events.
const (
	eventC2D      = "c2d"      // a message was queued for Device
	eventFeedback = "feedback" // feedback records wait in the store
	eventDesired  = "desired"  // Device's desired properties changed: Patch, Version
	eventHubs     = "hubs"     // a hub was created or deleted
	// A direct method call for Device (Call names it, Method its
	// request), answered by the node that has the device with
	// eventTaken at once and eventAnswer (Result) when the device answers.
	eventMethod = "method"
	eventTaken  = "method-taken"
	eventAnswer = "method-answer"
)

// hubEvent is one message between nodes.
type hubEvent struct {
	Node    string          `json:"node"` // the sender's run: a node acts on its own events at once
	Hub     string          `json:"hub,omitempty"`
	Event   string          `json:"event"`
	Device  string          `json:"device,omitempty"`
	Patch   json.RawMessage `json:"patch,omitempty"`
	Version int64           `json:"version,omitempty"`
	Call    string          `json:"call,omitempty"`
	Method  *MethodRequest  `json:"method,omitempty"`
	Result  *MethodResult   `json:"result,omitempty"`
	// Error is the answer to a call that failed on the node with the
	// device, in the Azure shape.
	Error *azurehub.Error `json:"error,omitempty"`
}

// announce tells the other nodes of ev, without waiting; a hub without
// other nodes does nothing.
func (h *Hub) announce(ev hubEvent) {
	if h.bus == nil {
		return
	}
	ev.Hub = h.cfg.Name
	h.bus(ev)
}

// announceC2D tells the other nodes that a message waits for id.
func (h *Hub) announceC2D(id string) { h.announce(hubEvent{Event: eventC2D, Device: id}) }

// announceDesired tells the other nodes of a desired-properties change
// of the twin id; a patch too large for an event is read from the store
// by the node that has the device.
func (h *Hub) announceDesired(id string, patch []byte, version int64) {
	ev := hubEvent{Event: eventDesired, Device: id, Version: version}
	if len(patch) < store.MaxBroadcast-512 {
		ev.Patch = patch
	}
	h.announce(ev)
}

// broadcast sends ev to the other nodes, in the background.
func (m *Manager) broadcast(ev hubEvent) {
	if m.bus == nil {
		return
	}
	ev.Node = m.run
	data, err := json.Marshal(ev)
	if err != nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.bus.Broadcast(ctx, data); err != nil {
			m.log.Warn("other nodes not told of a hub event; they see it when they next look", "hub", ev.Hub, "event", ev.Event, "err", err)
		}
	}()
}

// follow acts on the other nodes' events until ctx ends.
func (m *Manager) follow(ctx context.Context) {
	events, err := m.bus.Broadcasts(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("not following other nodes' hub events; devices connected here get what other nodes queue for them when they next connect", "err", err)
		}
		return
	}
	for data := range events {
		if len(data) == 0 {
			m.resync(ctx)
			continue
		}
		var ev hubEvent
		if err := json.Unmarshal(data, &ev); err != nil || ev.Node == m.run {
			continue
		}
		if ev.Event == eventHubs {
			m.syncHubs(ctx)
			continue
		}
		h, ok := m.Hub(ev.Hub)
		if !ok {
			continue
		}
		switch ev.Event {
		case eventC2D:
			go h.deliverC2D(ev.Device)
		case eventFeedback:
			go h.flushFeedback()
		case eventDesired:
			go h.pushDesiredFrom(ev)
		case eventMethod:
			go h.invokeFor(ev)
		case eventTaken, eventAnswer:
			h.remoteAnswer(ev)
		}
	}
}

// resync does what events missed could have asked: start and stop the
// hubs other nodes created and deleted, and offer every device connected
// here what waits for it. Desired-property changes missed are not pushed:
// devices get them with their next twin read, as after a reconnection.
func (m *Manager) resync(ctx context.Context) {
	m.syncHubs(ctx)
	m.mu.Lock()
	hubs := make([]*Hub, 0, len(m.hubs))
	for _, h := range m.hubs {
		hubs = append(hubs, h)
	}
	m.mu.Unlock()
	for _, h := range hubs {
		for _, id := range h.connectedDevices() {
			go h.deliverC2D(id)
		}
		go h.flushFeedback()
	}
}

// syncHubs starts the hubs of the store this node does not run yet and
// stops those no longer stored.
func (m *Manager) syncHubs(ctx context.Context) {
	cfgs, err := m.configs(ctx)
	if err != nil {
		m.log.Warn("hubs of other nodes not read", "err", err)
		return
	}
	stored := map[string]bool{}
	for _, cfg := range cfgs {
		key := strings.ToLower(cfg.Name)
		stored[key] = true
		m.mu.Lock()
		_, running := m.hubs[key]
		m.mu.Unlock()
		if !running {
			if err := m.runHub(cfg); err != nil {
				m.log.Warn("a stored hub not started on this node", "hub", cfg.Name, "err", err)
			} else {
				m.log.Info("built-in hub started: created through another node", "hub", cfg.Name)
			}
		}
	}
	m.mu.Lock()
	var gone []*Hub
	for key, h := range m.hubs {
		if !stored[key] {
			gone = append(gone, h)
			delete(m.hubs, key)
		}
	}
	m.mu.Unlock()
	for _, h := range gone {
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if err := h.close(cctx); err != nil {
			m.log.Warn("stopping a hub another node deleted", "hub", h.cfg.Name, "err", err)
		}
		cancel()
		m.log.Info("built-in hub another node deleted stopped here", "hub", h.cfg.Name)
	}
}

// connectedDevices lists the devices (and modules) connected to this node
// over MQTT or with an AMQP cloud-to-device link.
func (h *Hub) connectedDevices() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, s := range h.devices {
		if s.connected && s.cl != nil {
			out = append(out, s.cl.ID)
		}
	}
	for id := range h.amqpC2D {
		out = append(out, id)
	}
	return out
}

// takenWait bounds the wait for another node to say it has the device a
// direct method is for: past it the device is taken to be offline.
const takenWait = 3 * time.Second

// maxCrossPayload bounds a direct method's payload, and its answer, that
// cross between nodes: they travel in an event.
const maxCrossPayload = store.MaxBroadcast - 1024

// remoteCalls are the direct methods this node asked other nodes to
// invoke, by call id.
type remoteCalls struct {
	mu    sync.Mutex
	calls map[string]chan hubEvent
}

// invokeElsewhere asks the other nodes to invoke a direct method on a
// device that is not connected here, and waits for the answer of the one
// that has it.
func (h *Hub) invokeElsewhere(ctx context.Context, id string, req *MethodRequest) (*MethodResult, error) {
	offline := azurehub.Errorf(http.StatusNotFound, "DeviceNotOnline", "Device %s is not online or has not subscribed to direct methods.", id)
	if len(req.Payload) > maxCrossPayload {
		return nil, azurehub.Errorf(http.StatusBadRequest, azurehub.CodeArgumentInvalid,
			"Device %s is connected to another node; a payload of a direct method between nodes is at most %d bytes.", id, maxCrossPayload)
	}
	timeout := h.methodTimeout
	if req.ResponseTimeoutInSeconds > 0 {
		timeout = time.Duration(req.ResponseTimeoutInSeconds) * time.Second
	}
	call := newToken()
	ch := make(chan hubEvent, 2)
	h.remote.mu.Lock()
	if h.remote.calls == nil {
		h.remote.calls = map[string]chan hubEvent{}
	}
	h.remote.calls[call] = ch
	h.remote.mu.Unlock()
	defer func() {
		h.remote.mu.Lock()
		delete(h.remote.calls, call)
		h.remote.mu.Unlock()
	}()
	h.announce(hubEvent{Event: eventMethod, Device: id, Call: call, Method: req})
	taken := time.NewTimer(takenWait)
	defer taken.Stop()
	answer := time.NewTimer(timeout + takenWait)
	defer answer.Stop()
	for {
		select {
		case ev := <-ch:
			if ev.Event == eventTaken {
				taken.Stop()
				continue
			}
			if ev.Error != nil {
				return nil, ev.Error
			}
			if ev.Result == nil {
				return nil, offline
			}
			return ev.Result, nil
		case <-taken.C:
			return nil, offline
		case <-answer.C:
			return nil, azurehub.Errorf(http.StatusGatewayTimeout, "GatewayTimeout", "Timed out waiting for the response from device %s.", id)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// remoteAnswer passes another node's answer to the call waiting for it.
func (h *Hub) remoteAnswer(ev hubEvent) {
	h.remote.mu.Lock()
	ch := h.remote.calls[ev.Call]
	h.remote.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- ev:
	default:
	}
}

// invokeFor invokes a direct method another node was asked for, if the
// device is connected here, and sends the answer back.
func (h *Hub) invokeFor(ev hubEvent) {
	if ev.Method == nil {
		return
	}
	cl := h.client(ev.Device)
	if (cl == nil || !subscribed(cl, filterMethods)) && h.amqpMethodLink(ev.Device) == nil {
		return // not here
	}
	h.announce(hubEvent{Event: eventTaken, Call: ev.Call})
	ctx, cancel := context.WithTimeout(context.Background(), h.methodTimeout+time.Duration(ev.Method.ResponseTimeoutInSeconds)*time.Second)
	defer cancel()
	res, err := h.invokeHere(ctx, ev.Device, ev.Method)
	out := hubEvent{Event: eventAnswer, Call: ev.Call, Result: res}
	var ae *azurehub.Error
	switch {
	case err != nil && errors.As(err, &ae):
		out.Result, out.Error = nil, ae
	case err != nil:
		out.Result, out.Error = nil, azurehub.Errorf(http.StatusInternalServerError, "ServerError", "The direct method failed on the node the device is connected to: %v", err)
	case len(res.Payload) > maxCrossPayload:
		out.Result, out.Error = nil, azurehub.Errorf(http.StatusBadGateway, "ServerError",
			"The device answered with %d bytes; an answer between nodes is at most %d bytes.", len(res.Payload), maxCrossPayload)
	}
	h.announce(out)
}
