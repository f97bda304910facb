package httperr

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// UnavailableRetryAfter is the Retry-After of every 503 dpsd answers because
// its store does not answer: the provisioning engine's wait, so a device and
// a service client are told the same.
const UnavailableRetryAfter = 3 * time.Second

// Unavailable returns the 503000 answer for a store that does not answer.
func Unavailable() *dps.Error {
	e := dps.New(dps.CodeServiceUnavailable)
	e.RetryAfter = UnavailableRetryAfter
	return e
}

// Answer returns what a client is told about err, with trackingID (a new one
// when empty): a copy of a *dps.Error; Unavailable for store.ErrUnavailable;
// a 500000 that does not leak err's text for anything else. The errors that
// are not a *dps.Error are logged, with the tracking id and r's method and
// path (r may be nil), to log (or slog.Default() when nil).
func Answer(r *http.Request, log *slog.Logger, err error, trackingID string) *dps.Error {
	if trackingID == "" {
		trackingID = NewTrackingID()
	}
	var de *dps.Error
	if errors.As(err, &de) {
		// Copy: package-level error values are shared between requests.
		e := *de
		if e.TrackingID == "" {
			e.TrackingID = trackingID
		}
		return &e
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, attrs := context.Background(), []any{"error", err, "trackingId", trackingID}
	if r != nil {
		ctx = r.Context()
		attrs = append(attrs, "method", r.Method, "path", r.URL.EscapedPath())
	}
	if errors.Is(err, store.ErrUnavailable) {
		log.WarnContext(ctx, "store unavailable", attrs...)
		de = Unavailable()
	} else {
		log.ErrorContext(ctx, "request failed", attrs...)
		de = dps.AsError(err) // a new 500000 error: err's text is not for clients
	}
	de.TrackingID = trackingID
	return de
}

// Body is Answer with a new tracking id and the time stamped, and its JSON
// body: what every transport sends a client that is refused (HTTP bodies,
// MQTT response payloads, AMQP rejection descriptions). r may be nil.
func Body(r *http.Request, log *slog.Logger, err error) (*dps.Error, []byte) {
	e := Answer(r, log, err, "")
	if e.TimestampUTC.IsZero() {
		e.TimestampUTC = time.Now().UTC()
	}
	data, mErr := json.Marshal(e)
	if mErr != nil {
		// Unreachable for a dps.Error; still, every answer must be JSON.
		data = []byte(`{"errorCode":500000,"message":"Internal server error."}`)
	}
	return e, data
}

// Write answers r with err: Answer, then the error body with the status its
// code implies, an x-ms-error-code header, and Retry-After when set. log
// receives the errors that are not a *dps.Error; nil means slog.Default().
// r may be nil when there is no request to log with. It returns the answer
// sent.
func Write(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) *dps.Error {
	e, data := Body(r, log, err)
	w.Header().Set(dps.HeaderErrorCode, strconv.Itoa(e.ErrorCode))
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", RetryAfterSeconds(e.RetryAfter))
	}
	w.Header().Set("Content-Type", ContentTypeJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(e.Status())
	w.Write(data)
	return e
}
