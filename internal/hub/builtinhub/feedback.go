package builtinhub

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	wire "github.com/dpsd/dpsd/internal/amqp"
)

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
// sends them on the services' feedback links.
type feedbackHub struct {
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
	f := h.fb
	f.mu.Lock()
	f.pending = append(f.pending, rec)
	if len(f.pending) > maxFeedback {
		f.pending = append(f.pending[:0:0], f.pending[len(f.pending)-maxFeedback:]...)
	}
	f.mu.Unlock()
	go h.flushFeedback()
}

// flushFeedback sends the pending records, as one message, on a feedback
// link, if one is attached; they stay pending otherwise.
func (h *Hub) flushFeedback() {
	f := h.fb
	f.mu.Lock()
	if len(f.pending) == 0 || len(f.links) == 0 {
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
