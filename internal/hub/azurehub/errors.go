package azurehub

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error codes of the hub REST API (the name after "ErrorCode:").
const (
	CodeDeviceAlreadyExists = "DeviceAlreadyExists"
	CodeDeviceNotFound      = "DeviceNotFound"
	CodeModuleNotFound      = "ModuleNotFound"
	CodeModuleAlreadyExists = "ModuleAlreadyExistsOnDevice"
	CodePreconditionFailed  = "PreconditionFailed"
	CodeArgumentInvalid     = "ArgumentInvalid"
	CodeUnauthorized        = "IotHubUnauthorizedAccess"
	CodeThrottled           = "ThrottlingException"
	CodeServerError         = "ServerError"
	CodeServiceUnavailable  = "ServiceUnavailable"
)

// Sentinels that *Error matches with errors.Is by HTTP status, so callers
// need not know the many code names hubs use.
var (
	ErrNotFound     = errors.New("hub: not found")           // 404
	ErrExists       = errors.New("hub: already exists")      // 409
	ErrPrecondition = errors.New("hub: precondition failed") // 412
	ErrThrottled    = errors.New("hub: throttled")           // 429
	ErrUnauthorized = errors.New("hub: unauthorized")        // 401, 403
)

// Error is an error answered by a hub.
type Error struct {
	StatusCode int
	// Code is the hub's error code name (e.g. DeviceNotFound), or the
	// numeric errorCode of the other body shape, or "" if the body had none.
	Code       string
	Message    string
	TrackingID string
	// RetryAfter is the Retry-After the hub asked for, if any.
	RetryAfter time.Duration
}

// Errorf returns an *Error with status, code and a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{StatusCode: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("hub: %d %s: %s", e.StatusCode, e.Code, e.Message)
	}
	return fmt.Sprintf("hub: %d: %s", e.StatusCode, e.Message)
}

// Is matches the sentinel errors by status.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrExists:
		return e.StatusCode == http.StatusConflict
	case ErrPrecondition:
		return e.StatusCode == http.StatusPreconditionFailed
	case ErrThrottled:
		return e.StatusCode == http.StatusTooManyRequests
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden
	}
	return false
}

// Temporary reports whether retrying the request may succeed.
func (e *Error) Temporary() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// gatewayBody is the error shape of the hub REST API.
type gatewayBody struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// protocolBody is the error shape of the hub's other surfaces, which some
// REST answers use too.
type protocolBody struct {
	ErrorCode  json.Number `json:"errorCode"`
	TrackingID string      `json:"trackingId"`
	Message    string      `json:"message"`
}

// parseError builds an *Error from an error answer. The status decides;
// the body is informational and may have either shape, or none.
func parseError(status int, h http.Header, body []byte) *Error {
	e := &Error{StatusCode: status}
	if ra := h.Get("Retry-After"); ra != "" {
		if n, err := strconv.Atoi(ra); err == nil && n >= 0 {
			e.RetryAfter = time.Duration(n) * time.Second
		}
	}
	// encoding/json matches keys case-insensitively, so the gateway shape's
	// "Message" also takes the other shape's "message": a body with an
	// errorCode is the other shape, whatever else it has.
	var p protocolBody
	perr := json.Unmarshal(body, &p)
	if perr == nil && p.ErrorCode != "" {
		e.Code, e.Message, e.TrackingID = p.ErrorCode.String(), p.Message, p.TrackingID
		return e
	}
	var g gatewayBody
	if json.Unmarshal(body, &g) == nil && g.Message != "" {
		msg := g.Message
		if rest, ok := strings.CutPrefix(msg, "ErrorCode:"); ok {
			code, text, _ := strings.Cut(rest, ";")
			e.Code, msg = code, text
		}
		e.Message = msg
		if id, ok := strings.CutPrefix(g.ExceptionMessage, "Tracking ID:"); ok {
			e.TrackingID = id
		}
		return e
	}
	if perr == nil && p.Message != "" {
		e.Code, e.Message, e.TrackingID = p.ErrorCode.String(), p.Message, p.TrackingID
		return e
	}
	e.Message = strings.TrimSpace(string(body))
	if len(e.Message) > 200 {
		e.Message = e.Message[:200] + "…"
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return e
}
