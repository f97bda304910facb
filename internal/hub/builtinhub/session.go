package builtinhub

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"

	"github.com/dpsd/dpsd/internal/store"
)

type (
	storageClient       = storage.Client
	storageSubscription = storage.Subscription
)

// sessionDoc is a persistent MQTT session (clean session off) in the
// store: who it belongs to and what it subscribed to.
type sessionDoc struct {
	ClientID      string       `json:"clientId"`
	Username      string       `json:"username,omitempty"`
	Subscriptions []sessionSub `json:"subscriptions"`
}

type sessionSub struct {
	Filter string `json:"filter"`
	QoS    byte   `json:"qos"`
}

const sessionTimeout = 5 * time.Second

// saveSession stores a persistent session, or removes the stored one when
// the client asked for a clean session.
func (h *Hub) saveSession(cl *mqtt.Client) {
	if cl.Net.Conn == nil {
		return
	}
	if cl.Properties.Clean {
		h.deleteSessionRecord(cl.ID)
		return
	}
	doc := sessionDoc{ClientID: cl.ID, Username: string(cl.Properties.Username), Subscriptions: []sessionSub{}}
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		doc.Subscriptions = append(doc.Subscriptions, sessionSub{Filter: filter, QoS: sub.Qos})
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	_, err = h.st.Put(ctx, store.Record{Kind: KindSession, ID: deviceKey(h.cfg.Name, cl.ID), Ref: h.cfg.Name, Data: data}, store.Condition{})
	if err != nil {
		h.log.Warn("saving mqtt session failed", "deviceId", cl.ID, "err", err)
	}
}

func (h *Hub) deleteSessionRecord(clientID string) {
	ctx, cancel := context.WithTimeout(context.Background(), sessionTimeout)
	defer cancel()
	err := h.st.Delete(ctx, KindSession, deviceKey(h.cfg.Name, clientID), store.Condition{})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		h.log.Warn("deleting mqtt session failed", "deviceId", clientID, "err", err)
	}
}

// dropSession forgets a deleted device's session, stored and in memory.
func (h *Hub) dropSession(ctx context.Context, clientID string) {
	if cl, ok := h.broker.Clients.Get(clientID); ok {
		h.broker.UnsubscribeClient(cl)
		h.broker.Clients.Delete(clientID)
	}
	err := h.st.Delete(ctx, KindSession, deviceKey(h.cfg.Name, clientID), store.Condition{})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		h.log.Warn("deleting mqtt session failed", "deviceId", clientID, "err", err)
	}
}

// sessions reads every stored session of the hub.
func (h *Hub) sessions() ([]sessionDoc, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []sessionDoc
	opt := store.ListOptions{Ref: h.cfg.Name}
	for {
		recs, more, err := h.st.List(ctx, KindSession, opt)
		if err != nil {
			return nil, err
		}
		for _, rec := range recs {
			var d sessionDoc
			if err := json.Unmarshal(rec.Data, &d); err != nil {
				h.log.Warn("skipping unreadable mqtt session", "id", rec.ID, "err", err)
				continue
			}
			out = append(out, d)
		}
		if !more || len(recs) == 0 {
			return out, nil
		}
		opt.After = recs[len(recs)-1].ID
	}
}

func (h *Hub) storedClients() ([]storage.Client, error) {
	docs, err := h.sessions()
	if err != nil {
		return nil, err
	}
	out := make([]storage.Client, 0, len(docs))
	for _, d := range docs {
		out = append(out, storage.Client{
			ID:              d.ClientID,
			Username:        []byte(d.Username),
			Listener:        listenerTLS,
			ProtocolVersion: 4,
			Clean:           false,
		})
	}
	return out, nil
}

func (h *Hub) storedSubscriptions() ([]storage.Subscription, error) {
	docs, err := h.sessions()
	if err != nil {
		return nil, err
	}
	var out []storage.Subscription
	for _, d := range docs {
		for _, s := range d.Subscriptions {
			out = append(out, storage.Subscription{Client: d.ClientID, Filter: s.Filter, Qos: s.QoS})
		}
	}
	return out, nil
}
