package builtinhub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
	"github.com/dpsd/dpsd/internal/store"
)

// KindFeedback holds a hub's feedback records waiting for a service's
// feedback receiver, on whichever node it is attached; id = Ref = hub
// name.
const KindFeedback = store.KindHubFeedback

// maxFeedback bounds the feedback records a hub keeps for a service that
// has not attached its feedback link yet; the oldest go first.
const maxFeedback = 1000

// FeedbackRecord is one cloud-to-device delivery outcome, in IoT Hub's
// feedback message shape.
type FeedbackRecord struct {
	OriginalMessageID  string `json:"originalMessageId"`
	DeviceID           string `json:"deviceId"`
	DeviceGenerationID string `json:"deviceGenerationId,omitempty"`
	StatusCode         string `json:"statusCode"`
	Description        string `json:"description"`
	EnqueuedTimeUTC    string `json:"enqueuedTimeUtc"`
}

// feedbackHub collects delivery outcomes the senders asked for (ack) and
// sends them on the services' feedback links. With a store they wait in
// the store (pending is for hubs without one), so that a feedback
// receiver attached to any node sharing it gets them, and they survive a
// restart.
type feedbackHub struct {
	flush   sync.Mutex
	mu      sync.Mutex
	pending []FeedbackRecord
	links   map[*wire.Link]struct{}
}

func newFeedbackHub() *feedbackHub { return &feedbackHub{links: map[*wire.Link]struct{}{}} }

// feedback records the outcome of message m, if its ack asks for it:
// "positive" for successes, "negative" for the others, "full" for both.
func (h *Hub) feedback(m *queued, status string) {
	success := status == statusSuccess
	switch m.Ack {
	case "full":
	case "positive":
		if !success {
			return
		}
	case "negative":
		if success {
			return
		}
	default:
		return
	}
	rec := FeedbackRecord{OriginalMessageID: m.MessageID, DeviceID: m.device, StatusCode: status, Description: statusDescription[status],
		EnqueuedTimeUTC: h.now().UTC().Format("2006-01-02T15:04:05.0000000Z")}
	if h.st != nil {
		// Kept in the store, where the node with the service's feedback
		// receiver, this one or another, takes it from.
		go func() {
			if err := h.storeFeedback([]FeedbackRecord{rec}, false); err != nil {
				h.log.Warn("cloud-to-device feedback lost", "deviceId", m.device, "messageId", m.MessageID, "err", err)
				return
			}
			h.announce(hubEvent{Event: eventFeedback})
			h.flushFeedback()
		}()
		return
	}
	f := h.fb
	f.mu.Lock()
	f.pending = append(f.pending, rec)
	if len(f.pending) > maxFeedback {
		f.pending = append(f.pending[:0:0], f.pending[len(f.pending)-maxFeedback:]...)
	}
	f.mu.Unlock()
	go h.flushFeedback()
}

// feedbackAttempts bounds the retries of a change of the stored feedback
// that met another node's.
const feedbackAttempts = 10

// storeFeedback adds recs to the hub's stored feedback, after what waits
// there or, with first, before it (records taken but not delivered); the
// oldest go past maxFeedback.
func (h *Hub) storeFeedback(recs []FeedbackRecord, first bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range feedbackAttempts {
		waiting, etag, err := h.readFeedback(ctx)
		if err != nil {
			return err
		}
		if first {
			waiting = append(append([]FeedbackRecord(nil), recs...), waiting...)
		} else {
			waiting = append(waiting, recs...)
		}
		if len(waiting) > maxFeedback {
			waiting = waiting[len(waiting)-maxFeedback:]
		}
		data, err := json.Marshal(waiting)
		if err != nil {
			return err
		}
		cond := store.Condition{IfMatch: etag}
		if etag == "" {
			cond = store.Condition{MustNotExist: true}
		}
		_, err = h.st.Put(ctx, store.Record{Kind: KindFeedback, ID: h.cfg.Name, Ref: h.cfg.Name, Data: data}, cond)
		if err == nil || !errors.Is(err, store.ErrPrecondition) && !errors.Is(err, store.ErrExists) {
			return err
		}
	}
	return errors.New("the stored feedback changed too often")
}

// readFeedback returns the stored feedback and its etag ("" for none).
func (h *Hub) readFeedback(ctx context.Context) ([]FeedbackRecord, string, error) {
	rec, err := h.st.Get(ctx, KindFeedback, h.cfg.Name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	var recs []FeedbackRecord
	if err := json.Unmarshal(rec.Data, &recs); err != nil {
		return nil, "", fmt.Errorf("stored feedback: %w", err)
	}
	return recs, rec.ETag, nil
}

// takeFeedback removes and returns the stored feedback, unless another
// node takes it first.
func (h *Hub) takeFeedback() ([]FeedbackRecord, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range feedbackAttempts {
		recs, etag, err := h.readFeedback(ctx)
		if err != nil || etag == "" {
			return nil, err
		}
		err = h.st.Delete(ctx, KindFeedback, h.cfg.Name, store.Condition{IfMatch: etag})
		if err == nil {
			return recs, nil
		}
		if !errors.Is(err, store.ErrPrecondition) && !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	return nil, errors.New("the stored feedback changed too often")
}

// flushFeedback sends the pending records, as one message, on a feedback
// link, if one is attached; they stay pending otherwise.
func (h *Hub) flushFeedback() {
	f := h.fb
	// One flush at a time per node: the records go out in order.
	f.flush.Lock()
	defer f.flush.Unlock()
	f.mu.Lock()
	if (h.st == nil && len(f.pending) == 0) || len(f.links) == 0 {
		f.mu.Unlock()
		return
	}
	var link *wire.Link
	for l := range f.links {
		link = l
		break
	}
	recs := f.pending
	f.pending = nil
	f.mu.Unlock()
	if h.st != nil {
		var err error
		if recs, err = h.takeFeedback(); err != nil {
			h.log.Warn("stored cloud-to-device feedback not read", "err", err)
			return
		}
		if len(recs) == 0 {
			return
		}
	}
	body, err := json.Marshal(recs)
	if err != nil {
		return
	}
	msg := &wire.Message{
		Properties: wire.Properties{MessageID: newToken(), ContentType: "application/vnd.microsoft.iothub.feedback.json"},
		Data:       [][]byte{body},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := link.Send(ctx, msg); err != nil {
		h.log.Debug("feedback not delivered; kept", "err", err)
		if h.st != nil {
			if err := h.storeFeedback(recs, true); err != nil {
				h.log.Warn("cloud-to-device feedback lost", "records", len(recs), "err", err)
			}
			return
		}
		f.mu.Lock()
		f.pending = append(recs, f.pending...)
		f.mu.Unlock()
	}
}

func (h *Hub) addFeedbackLink(l *wire.Link) {
	h.fb.mu.Lock()
	h.fb.links[l] = struct{}{}
	h.fb.mu.Unlock()
	go h.flushFeedback()
}

func (h *Hub) removeFeedbackLink(l *wire.Link) {
	h.fb.mu.Lock()
	delete(h.fb.links, l)
	h.fb.mu.Unlock()
}
