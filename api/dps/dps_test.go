package dps

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestErrorStatus(t *testing.T) {
	tests := []struct {
		code, status int
	}{
		{CodeInvalidArgument, 400},
		{CodeCustomAllocationFailed, 400},
		{CodeUnauthorized, 401},
		{CodeUnauthorizedDevice, 401},
		{CodeEnrollmentNotFound, 404},
		{CodeConflict, 409},
		{CodePreconditionFailed, 412},
		{CodeThrottled, 429},
		{CodeServiceUnavailable, 503},
		{42, 500},     // not an Azure code
		{999999, 500}, // no such status
	}
	for _, tc := range tests {
		if got := (&Error{ErrorCode: tc.code}).Status(); got != tc.status {
			t.Errorf("Status of %d = %d, want %d", tc.code, got, tc.status)
		}
	}
}

func TestAsErrorHidesCauses(t *testing.T) {
	wrapped := fmt.Errorf("context: %w", Errorf(CodeConflict, "exists"))
	if e := AsError(wrapped); e.ErrorCode != CodeConflict {
		t.Errorf("wrapped dps error lost: %+v", e)
	}
	e := AsError(errors.New("database password is hunter2"))
	if e.ErrorCode != CodeInternal || e.Message != "Internal server error." {
		t.Errorf("plain error became %+v", e)
	}
}

func TestWriteError(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteError(rec, &Error{ErrorCode: CodeThrottled, Message: "slow down", RetryAfter: 1500 * time.Millisecond})
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "2" || rec.Header().Get(HeaderErrorCode) != "429001" ||
		rec.Header().Get("Content-Type") != ContentTypeJSON || rec.Header().Get("Content-Length") != strconv.Itoa(rec.Body.Len()) {
		t.Fatalf("headers %v, status %d", rec.Header(), rec.Code)
	}
	var body Error
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.ErrorCode != CodeThrottled || body.TrackingID == "" || body.TimestampUTC.IsZero() || body.Message != "slow down" {
		t.Errorf("body %+v", body)
	}
}

func TestAuthorized(t *testing.T) {
	req := httptest.NewRequest(http.MethodGet, "/dpsd/x", nil)
	tests := []struct {
		name      string
		authorize func(*http.Request) error
		ok        bool
		code      int
	}{
		{"no check", nil, true, 0},
		{"allowed", func(*http.Request) error { return nil }, true, 0},
		{"dps error kept", func(*http.Request) error { return Errorf(CodeUnauthorized, "no right") }, false, CodeUnauthorized},
		{"other error is 401", func(*http.Request) error { return errors.New("boom") }, false, CodeUnauthorized},
	}
	for _, tc := range tests {
		rec := httptest.NewRecorder()
		if ok := Authorized(rec, req, tc.authorize); ok != tc.ok {
			t.Errorf("%s: Authorized = %v", tc.name, ok)
		}
		if tc.code != 0 && rec.Header().Get(HeaderErrorCode) != strconv.Itoa(tc.code) {
			t.Errorf("%s: answered %d %s", tc.name, rec.Code, rec.Body)
		}
	}
}

func TestTerminal(t *testing.T) {
	for status, want := range map[string]bool{StatusAssigned: true, StatusFailed: true, StatusDisabled: true, StatusAssigning: false, StatusUnassigned: false} {
		if Terminal(status) != want {
			t.Errorf("Terminal(%q) != %v", status, want)
		}
	}
}

func TestDecodeBody(t *testing.T) {
	type doc struct {
		A int `json:"a"`
	}
	tests := []struct {
		name, ct, body string
		strict         bool
		code           int
	}{
		{"ok", "application/json; charset=utf-8", `{"a":1}`, true, 0},
		{"no content type", "", `{"a":1}`, true, 0},
		{"unknown member, lenient", "", `{"a":1,"b":2}`, false, 0},
		{"unknown member, strict", "", `{"a":1,"b":2}`, true, CodeInvalidArgument},
		{"not JSON", "", `{"a":`, false, CodeInvalidArgument},
		{"wrong media type", "text/plain", `{"a":1}`, false, CodeUnsupportedMediaType},
		{"too large", "", `{"a":1}` + strings.Repeat(" ", 64), false, CodeRequestEntityTooLarge},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(http.MethodPut, "/x", strings.NewReader(tc.body))
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		var d doc
		err := DecodeBody(r, &d, 64, tc.strict, "valid JSON")
		switch {
		case err != nil && AsError(err).ErrorCode != tc.code:
			t.Errorf("%s: %v, want code %d", tc.name, err, tc.code)
		case err == nil && (tc.code != 0 || d.A != 1):
			t.Errorf("%s: decoded %+v, want code %d", tc.name, d, tc.code)
		}
	}
}
