package dps

import (
	"fmt"
	"slices"
	"strings"
)

// CodeInfo describes one error code of the catalogue.
type CodeInfo struct {
	Code int
	// Name is the Go constant that holds Code.
	Name string
	// Message is the message an error of this code carries when the place
	// that raises it has nothing more precise to say.
	Message string
	// When says when dpsd answers with the code.
	When string
}

// Status is the HTTP status that goes with the code: Code/1000, as the
// SDKs compute it.
func (c CodeInfo) Status() int { return c.Code / 1000 }

// Codes is the catalogue of every error code dpsd sends, ordered by code.
// docs/errors.md is generated from it (go test ./api/dps -run
// TestErrorTable -update), so a code added here is documented at once.
var Codes = []CodeInfo{
	{CodeBadRequest, "CodeBadRequest", "The request is not valid.", "a request the API cannot read: a missing or unknown api-version, an unreadable body, a failed proof of possession"},
	{CodeInvalidArgument, "CodeInvalidArgument", "A member of the request is not valid.", "a request body or id that fails validation"},
	{CodeCustomAllocationFailed, "CodeCustomAllocationFailed", "Custom allocation failed.", "the custom allocation webhook failed, answered an error status or an answer dpsd cannot use"},
	{CodeCustomAllocationIoTHubNotSpecified, "CodeCustomAllocationIoTHubNotSpecified", "Custom allocation failed: the webhook's answer names no IoT hub.", "the webhook's answer has no iotHubHostName"},
	{CodeCustomAllocationUnauthorizedAccess, "CodeCustomAllocationUnauthorizedAccess", "Custom allocation failed with status code: 401.", "the webhook answered 401"},
	{CodeIoTHubNotLinked, "CodeIoTHubNotLinked", "The IoT hub is not linked to this provisioning service.", "the enrollment or the webhook names a hub that is not a linked candidate"},
	{CodeNoHubForAllocation, "CodeNoHubForAllocation", "No IoT hub is available to assign the device to.", "static or hashed allocation found no healthy hub"},
	{CodeHubRegistrationFailed, "CodeHubRegistrationFailed", "Registering the device in its IoT hub failed.", "the assigned hub refused the device identity"},
	{CodeInvalidCSR, "CodeInvalidCSR", "The certificate signing request is not valid.", "a register request whose csr is not base64 DER PKCS#10, or whose signature does not verify"},
	{CodeCSRSubjectMismatch, "CodeCSRSubjectMismatch", "The certificate signing request's subject must be the registration id.", "a csr whose subject common name is not the registration id"},
	{CodeCSRKeyNotAllowed, "CodeCSRKeyNotAllowed", "The certificate signing request's key is not allowed.", "a csr with a key type or size the issuance policy refuses (RSA under the minimum size, a curve other than P-256/P-384/P-521, any other algorithm)"},
	{CodeCertificateIssuanceNotConfigured, "CodeCertificateIssuanceNotConfigured", "The enrollment does not issue certificates.", "a csr for an enrollment or group without clientCertificateIssuancePolicy, or whose certificateAuthorityName names no issuing CA"},
	{CodeUnauthorized, "CodeUnauthorized", "Unauthorized.", "a missing, malformed, expired or wrongly signed SAS token"},
	{CodeUnauthorizedDevice, "CodeUnauthorizedDevice", "Unauthorized.", "a device whose proof (SAS key or X.509 certificate) no enrollment accepts"},
	{CodeForbidden, "CodeForbidden", "Forbidden.", "a caller whose policy lacks the right the operation needs"},
	{CodeNotFound, "CodeNotFound", "Not found.", "a path no operation serves, or a resource of dpsd's own endpoints that does not exist"},
	{CodeEnrollmentNotFound, "CodeEnrollmentNotFound", "Enrollment not found.", "no individual enrollment has the registration id"},
	{CodeRegistrationNotFound, "CodeRegistrationNotFound", "Registration not found.", "no registration record has the registration id"},
	{CodeOperationNotFound, "CodeOperationNotFound", "Operation not found.", "a poll for an operation id that is unknown or was interrupted"},
	{CodeEnrollmentGroupNotFound, "CodeEnrollmentGroupNotFound", "Enrollment group not found.", "no enrollment group has the id"},
	{CodeIDScopeNotFound, "CodeIDScopeNotFound", "The ID scope is not served here.", "a device request for another ID scope"},
	{CodeMethodNotAllowed, "CodeMethodNotAllowed", "The method is not allowed here.", "a method the path does not support"},
	{CodeConflict, "CodeConflict", "The resource already exists or is being changed.", "creating what exists without If-Match, or a concurrent change"},
	{CodePreconditionFailed, "CodePreconditionFailed", "The etag does not match.", "If-Match names an etag other than the current one"},
	{CodeRequestEntityTooLarge, "CodeRequestEntityTooLarge", "The request body is too large.", "a body over the endpoint's limit"},
	{CodeUnsupportedMediaType, "CodeUnsupportedMediaType", "The request body must be application/json.", "a body of another content type"},
	{CodeThrottled, "CodeThrottled", "Too many requests; try again later.", "too many requests in flight; Retry-After says when to retry"},
	{CodeInternal, "CodeInternal", "Internal server error.", "a failure whose cause is logged with the tracking id, not sent"},
	{CodeServiceUnavailable, "CodeServiceUnavailable", "The service is unavailable; try again later.", "the store does not answer, the node is shutting down, or a request timed out; Retry-After says when to retry"},
}

// Lookup returns the catalogue entry of code.
func Lookup(code int) (CodeInfo, bool) {
	i, ok := slices.BinarySearchFunc(Codes, code, func(c CodeInfo, code int) int { return c.Code - code })
	if !ok {
		return CodeInfo{}, false
	}
	return Codes[i], true
}

// New returns an Error with code and the catalogue's message for it.
func New(code int) *Error {
	c, ok := Lookup(code)
	if !ok {
		return &Error{ErrorCode: code, Message: fmt.Sprintf("Error %d.", code)}
	}
	return &Error{ErrorCode: code, Message: c.Message}
}

// ErrorTable renders the catalogue as the Markdown table of docs/errors.md.
func ErrorTable() string {
	var b strings.Builder
	b.WriteString("| errorCode | HTTP status | constant | default message | when |\n")
	b.WriteString("|---|---|---|---|---|\n")
	for _, c := range Codes {
		fmt.Fprintf(&b, "| %d | %d | `%s` | %s | %s |\n", c.Code, c.Status(), c.Name, c.Message, c.When)
	}
	return b.String()
}
