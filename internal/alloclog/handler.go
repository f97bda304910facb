package alloclog

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
)

// HandlerOptions configure the HTTP handler.
type HandlerOptions struct {
	// Authorize is called first for every request; an error (a *dps.Error
	// for a specific code, 401000 otherwise) is answered as is. The log is
	// registration data: RegistrationStatusRead is the right that fits.
	Authorize func(*http.Request) error
	Logger    *slog.Logger
}

// Response is the wire form of a device's allocation log, defined in api/admin.
type Response = admin.AllocationLog

// Handler serves GET .../registrations/{id}/allocationLog with a Response
// (entries oldest first; an empty list for a device that never had a
// custom allocation). It finds the "registrations" segment wherever it is
// mounted (dpsd mounts it at /dpsd/registrations/).
func (l *Log) Handler(opt HandlerOptions) http.Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httperr.Authorized(w, r, opt.Authorize) {
			return
		}
		id, ok := registrationID(r.URL)
		if !ok {
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s", r.URL.Path))
			return
		}
		if r.Method != http.MethodGet {
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", r.Method, r.URL.Path))
			return
		}
		entries, err := l.List(r.Context(), id)
		if err != nil {
			httperr.Write(w, r, opt.Logger, fmt.Errorf("reading the allocation log of %s: %w", id, err))
			return
		}
		httperr.WriteJSON(w, http.StatusOK, &Response{RegistrationID: id, Entries: entries})
	})
}

// registrationID finds {id} in ".../registrations/{id}/allocationLog".
func registrationID(u *url.URL) (string, bool) {
	segs := strings.Split(strings.Trim(u.EscapedPath(), "/"), "/")
	n := len(segs)
	if n < 3 || !strings.EqualFold(segs[n-3], "registrations") || !strings.EqualFold(segs[n-1], "allocationLog") {
		return "", false
	}
	id, err := url.PathUnescape(segs[n-2])
	if err != nil || id == "" {
		return "", false
	}
	return id, true
}
