package issuer

import (
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
	// Authorize is called first for every request; an error is answered
	// as is. Issuing CAs are service configuration (ServiceConfig).
	Authorize func(*http.Request) error
	Logger    *slog.Logger
}

// maxBodyBytes bounds a request body: a few PEM certificates and a key.
const maxBodyBytes = 64 << 10

// Handler serves dpsd's extension API for issuing CAs:
//
//	GET    .../issuingCAs          list (the local CA first)
//	GET    .../issuingCAs/{name}   one CA, without its key
//	PUT    .../issuingCAs/{name}   create or replace: admin.IssuingCAPut → 201 or 200
//	DELETE .../issuingCAs/{name}   delete → 204
func (r *Registry) Handler(opt HandlerOptions) http.Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !httperr.Authorized(w, req, opt.Authorize) {
			return
		}
		name, hasName, ok := caName(req.URL)
		if !ok {
			httperr.Write(w, req, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s", req.URL.Path))
			return
		}
		ctx := req.Context()
		status := http.StatusOK
		var out any
		var err error
		switch {
		case !hasName && req.Method == http.MethodGet:
			out, err = r.List(ctx)
		case hasName && req.Method == http.MethodGet:
			out, err = r.Get(ctx, name)
		case hasName && req.Method == http.MethodPut:
			var body admin.IssuingCAPut
			if err = httperr.DecodeBody(req, &body, maxBodyBytes, true, "certificates and privateKey in PEM"); err == nil {
				var created bool
				var v *admin.IssuingCA
				if v, created, err = r.Put(ctx, name, body.Certificates, body.PrivateKey); err == nil {
					out = v
					if created {
						status = http.StatusCreated
					}
					opt.Logger.Info("issuing CA saved", "name", name, "created", created, "subject", v.Subject)
				}
			}
		case hasName && req.Method == http.MethodDelete:
			if err = r.Delete(ctx, name); err == nil {
				opt.Logger.Info("issuing CA deleted", "name", name)
				w.WriteHeader(http.StatusNoContent)
				return
			}
		default:
			err = dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", req.Method, req.URL.Path)
		}
		if err != nil {
			httperr.Write(w, req, opt.Logger, err)
			return
		}
		httperr.WriteJSON(w, status, out)
	})
}

// caName finds the path segment after "issuingCAs".
func caName(u *url.URL) (name string, hasName, ok bool) {
	segs := strings.Split(strings.Trim(u.EscapedPath(), "/"), "/")
	for i, s := range segs {
		if !strings.EqualFold(s, "issuingCAs") {
			continue
		}
		switch rest := segs[i+1:]; len(rest) {
		case 0:
			return "", false, true
		case 1:
			n, err := url.PathUnescape(rest[0])
			if err != nil || n == "" {
				return "", false, false
			}
			return n, true, true
		}
		return "", false, false
	}
	return "", false, false
}
