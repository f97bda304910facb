package device

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
)

// Error is a registration the service refused or ended unsuccessfully: an
// HTTP or MQTT error status, or a terminal status "failed" or "disabled".
// Network failures are not *Error; they are returned wrapped as they are.
type Error struct {
	// Op is the step that failed: "connect", "register" or "poll".
	Op string
	// StatusCode is the HTTP status (or the status of the MQTT response
	// topic) of the answer; 200 for a terminal failed/disabled operation.
	StatusCode int
	// Status is the registration status ("failed", "disabled") when the
	// operation ended that way, else empty.
	Status string
	// Detail is the service's error: the error body of an error status, or
	// errorCode/errorMessage of a failed registration state. Never nil.
	Detail *dps.Error
	// OperationID is the operation that failed, when known.
	OperationID string
	// State is the registration state of a failed/disabled operation.
	State *dps.DeviceRegistrationState
	// RetryAfter is the service's Retry-After on a 429 or 5xx answer.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("device: ")
	b.WriteString(e.Op)
	switch {
	case e.Status != "":
		fmt.Fprintf(&b, ": registration %s", e.Status)
	case e.StatusCode != 0:
		fmt.Fprintf(&b, ": status %d", e.StatusCode)
	}
	if e.Detail.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail.Message)
	}
	if e.Detail.ErrorCode != 0 {
		fmt.Fprintf(&b, " (errorCode %d)", e.Detail.ErrorCode)
	}
	return b.String()
}

// Unwrap returns the service's error, so errors.As(err, new(*dps.Error))
// finds the Azure error code.
func (e *Error) Unwrap() error { return e.Detail }

// Code is the Azure error code (e.g. 401002), or 0 when the service sent none.
func (e *Error) Code() int { return e.Detail.ErrorCode }

// Temporary reports whether retrying later may succeed: throttling (429) and
// server errors (5xx), as the Azure SDKs classify them.
func (e *Error) Temporary() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// statusError builds the error for a non-2xx answer with body.
func statusError(op string, status int, retryAfter time.Duration, body []byte) *Error {
	d := &dps.Error{}
	if err := json.Unmarshal(body, d); err != nil || (d.ErrorCode == 0 && d.Message == "") {
		// Not a DPS error body (a proxy's page, the IoT hub gateway's
		// {"Message": …}, or nothing); keep what can be shown.
		d = &dps.Error{Message: gatewayMessage(body, status)}
	}
	if d.ErrorCode == 0 {
		d.ErrorCode = status * 1000
	}
	return &Error{Op: op, StatusCode: status, Detail: d, RetryAfter: retryAfter}
}

// gatewayMessage extracts a message from a non-DPS error body.
func gatewayMessage(body []byte, status int) string {
	var gw struct {
		Message string `json:"Message"`
	}
	if json.Unmarshal(body, &gw) == nil && gw.Message != "" {
		return gw.Message
	}
	if s := strings.TrimSpace(string(body)); s != "" && len(s) <= 200 && !strings.ContainsAny(s, "<{") {
		return s
	}
	if t := http.StatusText(status); t != "" {
		return t
	}
	return fmt.Sprintf("status %d", status)
}

// terminalError builds the error for an operation that ended failed or disabled.
func terminalError(op string, status int, o *dps.RegistrationOperationStatus) *Error {
	e := &Error{Op: op, StatusCode: status, Status: o.Status, OperationID: o.OperationID, State: o.RegistrationState, Detail: &dps.Error{}}
	if st := o.RegistrationState; st != nil {
		e.Detail.ErrorCode = st.ErrorCode
		e.Detail.Message = st.ErrorMessage
	}
	if e.Detail.Message == "" {
		e.Detail.Message = "registration status is " + o.Status
	}
	return e
}
