package refusal

import (
	"log/slog"
	"net/http"
	"strconv"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
)

// maxListed bounds one answer of the handler.
const maxListed = 100

// HandlerOptions configure the HTTP handler.
type HandlerOptions struct {
	// Authorize is called first for every request; an error is answered
	// as httperr.Authorized does. Refusals are registration data:
	// RegistrationStatusRead is the right that fits.
	Authorize func(*http.Request) error
	Logger    *slog.Logger
}

// Handler serves GET /dpsd/refusals?registrationId=&trackingId=&top= with
// an admin.Refusals, newest first (at most 100).
func (l *Log) Handler(opt HandlerOptions) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httperr.Authorized(w, r, opt.Authorize) {
			return
		}
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			httperr.Write(w, r, opt.Logger, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s; use GET.", r.Method, r.URL.Path))
			return
		}
		q := r.URL.Query()
		top := maxListed
		if s := q.Get("top"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				httperr.Write(w, r, opt.Logger, dps.Errorf(dps.CodeInvalidArgument, "top must be a positive number, not %q.", s))
				return
			}
			top = min(n, maxListed)
		}
		list, err := l.Find(r.Context(), q.Get("registrationId"), q.Get("trackingId"), top)
		if err != nil {
			// This node's own are still worth having; the others' are
			// missing, which the log says.
			opt.Logger.Warn("refusals: reading the shared store failed", "err", err)
		}
		httperr.WriteJSON(w, http.StatusOK, &admin.Refusals{Refusals: list})
	})
}
