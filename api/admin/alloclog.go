package admin

import (
	"encoding/json"
	"time"
)

// Outcomes of an allocation log entry.
const (
	OutcomeInProgress = "inProgress"
	OutcomeAssigned   = "assigned"
	OutcomeFailed     = "failed"
)

// AllocationLog is the body of GET .../registrations/{id}/allocationLog.
type AllocationLog struct {
	RegistrationID string               `json:"registrationId"`
	Entries        []AllocationLogEntry `json:"entries"`
}

// AllocationLogEntry is one custom allocation of one device.
type AllocationLogEntry struct {
	ID             string    `json:"id"`
	RegistrationID string    `json:"registrationId"`
	Started        time.Time `json:"startedUtc"`
	// WebhookURL is the URL called, its query string shown as "?****".
	WebhookURL string `json:"webhookUrl"`
	// Request is the body sent, or a JSON string of its first
	// alloclog.MaxRequestBytes when it was larger (RequestTruncated).
	Request          json.RawMessage     `json:"request,omitempty"`
	RequestTruncated bool                `json:"requestTruncated,omitempty"`
	Attempts         []AllocationAttempt `json:"attempts"`
	// Retries is how many attempts followed the first.
	Retries int `json:"retries"`
	// Outcome is OutcomeInProgress until the allocation ends.
	Outcome      string    `json:"outcome"`
	Hub          string    `json:"iotHubHostName,omitempty"`
	ErrorCode    int       `json:"errorCode,omitempty"`
	ErrorMessage string    `json:"errorMessage,omitempty"`
	Finished     time.Time `json:"finishedUtc,omitzero"`
	// DurationMs is the time from start to outcome, retries included.
	DurationMs int64 `json:"durationMs,omitempty"`
}

// AllocationAttempt is one call of the webhook.
type AllocationAttempt struct {
	Started time.Time `json:"startedUtc"`
	// Status is the HTTP status answered; 0 when there was no answer.
	Status int `json:"status,omitempty"`
	// Error says why there was no usable answer (timeout, connection
	// refused, body too large).
	Error string `json:"error,omitempty"`
	// Body is the body of an accepted answer (the allocation response):
	// JSON as sent when it is valid JSON no longer than
	// alloclog.MaxBodyBytes, otherwise a JSON string of its first
	// alloclog.MaxBodyBytes (BodyTruncated when cut).
	Body json.RawMessage `json:"body,omitempty"`
	// WebhookText is the start of an answer that was not accepted (a
	// refusal, an error page, anything that is not an allocation
	// response): the webhook's own words, untrusted, at most
	// alloclog.MaxWebhookTextBytes bytes with control characters
	// replaced (BodyTruncated when cut).
	WebhookText   string `json:"webhookText,omitempty"`
	BodyTruncated bool   `json:"bodyTruncated,omitempty"`
	DurationMs    int64  `json:"durationMs"`
	// RetryAfterMs is the wait before the next attempt, when one follows.
	RetryAfterMs int64 `json:"retryAfterMs,omitempty"`
}
