package httperr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

func TestWrite(t *testing.T) {
	for _, tt := range []struct {
		name       string
		err        error
		status     int
		code       int
		retryAfter string
		logged     string // the log line's level, "" for none
	}{
		{name: "dps error", err: dps.Errorf(dps.CodeNotFound, "gone"), status: 404, code: dps.CodeNotFound},
		{name: "store unavailable", err: fmt.Errorf("list: %w", store.ErrUnavailable), status: 503, code: dps.CodeServiceUnavailable, retryAfter: "3", logged: "WARN"},
		{name: "other", err: errors.New("disk on fire"), status: 500, code: dps.CodeInternal, logged: "ERROR"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			w := httptest.NewRecorder()
			Write(w, httptest.NewRequest(http.MethodGet, "/dpsd/x", nil), log, tt.err)
			if w.Code != tt.status {
				t.Errorf("status = %d, want %d", w.Code, tt.status)
			}
			if got := w.Header().Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			var body dps.Error
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", w.Body, err)
			}
			if body.ErrorCode != tt.code || body.TrackingID == "" {
				t.Errorf("body = %+v, want errorCode %d and a tracking id", body, tt.code)
			}
			if strings.Contains(body.Message, "disk on fire") {
				t.Errorf("message %q leaks the internal error", body.Message)
			}
			switch {
			case tt.logged == "" && logs.Len() > 0:
				t.Errorf("logged %q, want nothing", logs.String())
			case tt.logged != "" && (!strings.Contains(logs.String(), "level="+tt.logged) || !strings.Contains(logs.String(), body.TrackingID)):
				t.Errorf("logged %q, want a %s line with tracking id %s", logs.String(), tt.logged, body.TrackingID)
			}
		})
	}
}
