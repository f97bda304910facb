package dps

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Error codes: the HTTP status times 1000 plus a sub-code, as Azure numbers
// them. SDKs derive the HTTP status as code/1000, so every code must agree
// with the status it is sent with.
const (
	CodeBadRequest                         = 400000
	CodeInvalidArgument                    = 400004 // validation failure of a request body or id
	CodeCustomAllocationFailed             = 400207
	CodeCustomAllocationIoTHubNotSpecified = 400208
	CodeCustomAllocationUnauthorizedAccess = 400209
	CodeIoTHubNotLinked                    = 400210 // allocation named a hub that is not a candidate
	CodeNoHubForAllocation                 = 400211 // static/hashed allocation found no hub
	CodeHubRegistrationFailed              = 400212 // the assigned hub refused the device identity
	CodeInvalidCSR                         = 400213 // a csr that is not a signed PKCS#10 request
	CodeCSRSubjectMismatch                 = 400214 // a csr whose subject CN is not the registration id
	CodeCSRKeyNotAllowed                   = 400215 // a csr whose key type or size the policy refuses
	CodeCertificateIssuanceNotConfigured   = 400216 // a csr for an enrollment that names no usable issuing CA
	CodeUnauthorized                       = 401000
	CodeUnauthorizedDevice                 = 401002
	CodeForbidden                          = 403000
	CodeNotFound                           = 404000
	CodeEnrollmentNotFound                 = 404201
	CodeRegistrationNotFound               = 404202
	CodeOperationNotFound                  = 404203
	CodeEnrollmentGroupNotFound            = 404204
	CodeIDScopeNotFound                    = 404205
	CodeMethodNotAllowed                   = 405000
	CodeConflict                           = 409001
	CodePreconditionFailed                 = 412001
	CodeRequestEntityTooLarge              = 413000
	CodeUnsupportedMediaType               = 415000
	CodeThrottled                          = 429001
	CodeInternal                           = 500000
	CodeServiceUnavailable                 = 503000
)

// Error is the error body of both the service and the device API
// (ProvisioningServiceErrorDetails). It is also a Go error, so the layers
// below the transports can return it and the transports write it unchanged.
type Error struct {
	ErrorCode    int               `json:"errorCode"`
	TrackingID   string            `json:"trackingId"`
	Message      string            `json:"message"`
	TimestampUTC time.Time         `json:"timestampUtc"`
	Info         map[string]string `json:"info,omitempty"`

	// RetryAfter, when non-zero, is sent as the Retry-After of a 429 or 503.
	RetryAfter time.Duration `json:"-"`
}

// Errorf returns an Error with code and a formatted message.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{ErrorCode: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (errorCode %d)", e.Message, e.ErrorCode)
}

// Status is the HTTP status that goes with the error code.
func (e *Error) Status() int {
	s := e.ErrorCode / 1000
	if s < 400 || s > 599 || http.StatusText(s) == "" {
		return http.StatusInternalServerError
	}
	return s
}

// AsError returns err as an *Error, turning any other error into an internal
// error whose message does not leak the cause.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{ErrorCode: CodeInternal, Message: "Internal server error."}
}
