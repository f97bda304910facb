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

// AllocationLogEntry is one allocation of one device: a custom one's
// webhook calls or policy evaluation, or why a hashed, static or
// geoLatency allocation chose its hub.
type AllocationLogEntry struct {
	ID             string    `json:"id"`
	RegistrationID string    `json:"registrationId"`
	Started        time.Time `json:"startedUtc"`
	// AllocationPolicy is the policy applied: hashed, static, geoLatency
	// or custom.
	AllocationPolicy string `json:"allocationPolicy,omitempty"`
	// Candidates are the hubs the policy chose among, with what it
	// weighed (custom allocations: the request's linkedHubs).
	Candidates []AllocationCandidate `json:"candidates,omitempty"`
	// Reason says why the policy chose the hub (or none).
	Reason string `json:"reason,omitempty"`
	// PreviousHub is the device's hub before this registration, and
	// Reprovision what the enrollment's reprovision policy does about it:
	// whether the device moves, and whether its twin is migrated or reset.
	PreviousHub string `json:"previousHub,omitempty"`
	Reprovision string `json:"reprovision,omitempty"`
	// WebhookURL is the URL called, its query string shown as "?****", or
	// policy:NAME; empty for the other policies.
	WebhookURL string `json:"webhookUrl,omitempty"`
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

// AllocationCandidate is one hub an allocation could choose.
type AllocationCandidate struct {
	Name                  string `json:"name"`
	AllocationWeight      int    `json:"allocationWeight"`
	Location              string `json:"location,omitempty"`
	ApplyAllocationPolicy bool   `json:"applyAllocationPolicy"`
	// Health is the hub's health on the allocating node (HubHealth*),
	// empty when health checks are off; Skipped says the policy left the
	// hub out for being unhealthy.
	Health  string `json:"health,omitempty"`
	Skipped bool   `json:"skipped,omitempty"`
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

// WebhookTestRequest is the body of POST /dpsd/webhookTest: the device
// whose allocation is tried, without registering it.
type WebhookTestRequest struct {
	// Exactly one of EnrollmentGroupID and EnrollmentID (the individual
	// enrollment's registration id) names the enrollment.
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	EnrollmentID      string `json:"enrollmentId,omitempty"`
	RegistrationID    string `json:"registrationId"`
	// Payload is the custom payload the device would send.
	Payload json.RawMessage `json:"payload,omitempty"`
}

// WebhookTestResult is what trying one allocation found: the request
// dpsd sent (or gave the policy), the answer, how long it took, and which
// row of Azure's custom allocation outcome table it falls in.
type WebhookTestResult struct {
	AllocationPolicy string          `json:"allocationPolicy"`
	WebhookURL       string          `json:"webhookUrl,omitempty"`
	Request          json.RawMessage `json:"request,omitempty"`
	// Status is the webhook's HTTP status (200 for a policy's answer); 0
	// when there was no answer.
	Status int `json:"status,omitempty"`
	// Answer is an accepted answer; WebhookText the start of any other
	// (see AllocationAttempt).
	Answer      json.RawMessage `json:"answer,omitempty"`
	WebhookText string          `json:"webhookText,omitempty"`
	// Error says why there was no usable answer, or the policy's reason.
	Error     string  `json:"error,omitempty"`
	LatencyMs float64 `json:"latencyMs"`
	// Outcome is "assigned", "failed" or "retried" (a registration would
	// retry on Azure's schedule).
	Outcome string `json:"outcome"`
	// Row names the row of the outcome table, e.g. "401 → 400209".
	Row          string          `json:"row"`
	Hub          string          `json:"iotHubHostName,omitempty"`
	InitialTwin  json.RawMessage `json:"initialTwin,omitempty"`
	Payload      json.RawMessage `json:"payload,omitempty"`
	ErrorCode    int             `json:"errorCode,omitempty"`
	ErrorMessage string          `json:"errorMessage,omitempty"`
}
