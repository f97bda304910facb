package webhooksig

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
)

// HandlerOptions configure the HTTP handler.
type HandlerOptions struct {
	// Authorize is called first for every request (ServiceConfig: the
	// secret is service configuration).
	Authorize func(*http.Request) error
	Logger    *slog.Logger
}

// Handler serves dpsd's extension API for the signing secret:
//
//	GET  .../webhookSigning                       scheme, dates; no secret
//	GET  .../webhookSigning?includeSecrets=true   with the secrets
//	POST .../webhookSigning/rotate?overlap=24h    a new secret (returned); the
//	                                              old one signs too for overlap
func (k *Keeper) Handler(opt HandlerOptions) http.Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !httperr.Authorized(w, r, opt.Authorize) {
			return
		}
		path := strings.ToLower(strings.TrimSuffix(r.URL.Path, "/"))
		switch {
		case strings.HasSuffix(path, "/webhooksigning") && r.Method == http.MethodGet:
			v, err := k.Get(r.Context(), r.URL.Query().Get("includeSecrets") == "true")
			if err != nil {
				httperr.Write(w, r, opt.Logger, err)
				return
			}
			httperr.WriteJSON(w, http.StatusOK, v)
		case strings.HasSuffix(path, "/webhooksigning/rotate") && r.Method == http.MethodPost:
			var overlap time.Duration
			if s := r.URL.Query().Get("overlap"); s != "" {
				d, err := time.ParseDuration(s)
				if err != nil || d < 0 {
					httperr.Write(w, r, nil, dps.Errorf(dps.CodeInvalidArgument, "The overlap %q is not a duration such as 24h (0s for none).", s))
					return
				}
				if d == 0 {
					d = -1 // asked for none
				}
				overlap = d
			}
			v, err := k.Rotate(r.Context(), overlap)
			if err != nil {
				httperr.Write(w, r, opt.Logger, err)
				return
			}
			opt.Logger.Info("webhook signing secret rotated", "previousValidUntil", v.PreviousValidUntilUTC)
			httperr.WriteJSON(w, http.StatusOK, v)
		case strings.HasSuffix(path, "/webhooksigning") || strings.HasSuffix(path, "/webhooksigning/rotate"):
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", r.Method, r.URL.Path))
		default:
			httperr.Write(w, r, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s", r.URL.Path))
		}
	})
}
