// Package httperr answers a failed request of dpsd's extension APIs
// (linked hubs, CA certificates) in Azure's error shape, as the service API
// does: a *dps.Error as it is; the store being unavailable as 503 with
// Retry-After, so clients retry rather than give up; anything else as a
// 500 without its details, logged with the tracking id the client sees so
// the two can be matched.
//
// It is a package of its own because dps, which writes the error shape,
// must not depend on store.
package httperr

import (
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// UnavailableRetryAfter is the Retry-After of a 503 when the store is
// unavailable.
const UnavailableRetryAfter = 5 * time.Second

// Write answers r with err; see the package documentation. log receives
// the errors that are not a *dps.Error.
func Write(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var de *dps.Error
	if errors.As(err, &de) {
		dps.WriteError(w, de)
		return
	}
	trackingID := dps.NewTrackingID()
	ctx := r.Context()
	if errors.Is(err, store.ErrUnavailable) {
		log.WarnContext(ctx, "store unavailable", "error", err, "method", r.Method, "path", r.URL.EscapedPath(), "trackingId", trackingID)
		de = &dps.Error{ErrorCode: dps.CodeServiceUnavailable, Message: "The service's database is unavailable; try again later.", RetryAfter: UnavailableRetryAfter}
	} else {
		log.ErrorContext(ctx, "request failed", "error", err, "method", r.Method, "path", r.URL.EscapedPath(), "trackingId", trackingID)
		de = dps.AsError(err) // a new 500000 error: err's text is not for clients
	}
	de.TrackingID = trackingID
	dps.WriteError(w, de)
}
