package httperr

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
)

func TestWriteShape(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, nil, nil, &dps.Error{ErrorCode: dps.CodeThrottled, Message: "slow down", RetryAfter: 1500 * time.Millisecond})
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "2" || rec.Header().Get(dps.HeaderErrorCode) != "429001" ||
		rec.Header().Get("Content-Type") != ContentTypeJSON || rec.Header().Get("Content-Length") != strconv.Itoa(rec.Body.Len()) {
		t.Fatalf("headers %v, status %d", rec.Header(), rec.Code)
	}
	var body dps.Error
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.ErrorCode != dps.CodeThrottled || body.TrackingID == "" || body.TimestampUTC.IsZero() || body.Message != "slow down" {
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
		{"dps error kept", func(*http.Request) error { return dps.Errorf(dps.CodeUnauthorized, "no right") }, false, dps.CodeUnauthorized},
		{"other error is 401", func(*http.Request) error { return errors.New("boom") }, false, dps.CodeUnauthorized},
	}
	for _, tc := range tests {
		rec := httptest.NewRecorder()
		if ok := Authorized(rec, req, tc.authorize); ok != tc.ok {
			t.Errorf("%s: Authorized = %v", tc.name, ok)
		}
		if tc.code != 0 && rec.Header().Get(dps.HeaderErrorCode) != strconv.Itoa(tc.code) {
			t.Errorf("%s: answered %d %s", tc.name, rec.Code, rec.Body)
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
		{"unknown member, strict", "", `{"a":1,"b":2}`, true, dps.CodeInvalidArgument},
		{"not JSON", "", `{"a":`, false, dps.CodeInvalidArgument},
		{"wrong media type", "text/plain", `{"a":1}`, false, dps.CodeUnsupportedMediaType},
		{"too large", "", `{"a":1}` + strings.Repeat(" ", 64), false, dps.CodeRequestEntityTooLarge},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(http.MethodPut, "/x", strings.NewReader(tc.body))
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		var d doc
		err := DecodeBody(r, &d, 64, tc.strict, "valid JSON")
		switch {
		case err != nil && dps.AsError(err).ErrorCode != tc.code:
			t.Errorf("%s: %v, want code %d", tc.name, err, tc.code)
		case err == nil && (tc.code != 0 || d.A != 1):
			t.Errorf("%s: decoded %+v, want code %d", tc.name, d, tc.code)
		}
	}
}
