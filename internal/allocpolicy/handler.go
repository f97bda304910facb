package allocpolicy

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
)

// HandlerOptions configure the HTTP handler.
type HandlerOptions struct {
	// Authorize is called first for every request; an error is answered
	// as is. Policies are service configuration (ServiceConfig).
	Authorize func(*http.Request) error
	Logger    *slog.Logger
}

// maxBodyBytes bounds a request body: a policy and its JSON envelope.
const maxBodyBytes = MaxSourceBytes*2 + 4<<10

// Handler serves dpsd's extension API for allocation policies:
//
//	GET    .../allocationPolicies          list
//	POST   .../allocationPolicies          create: Definition with its name → 201 (409 if it exists)
//	GET    .../allocationPolicies/{name}   one policy (ETag header)
//	PUT    .../allocationPolicies/{name}   create or replace: Definition → 201 or 200
//	                                       (If-Match: replace that version only;
//	                                        If-None-Match: * create only)
//	DELETE .../allocationPolicies/{name}   delete → 204 (If-Match optional)
//
// A policy that does not compile is answered 400 (400004) with the
// compiler's message, line and column.
func (r *Registry) Handler(opt HandlerOptions) http.Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !httperr.Authorized(w, req, opt.Authorize) {
			return
		}
		name, hasName, ok := policyName(req.URL)
		if !ok {
			httperr.Write(w, req, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s", req.URL.Path))
			return
		}
		ctx := req.Context()
		var (
			status = http.StatusOK
			out    any
			err    error
		)
		switch {
		case !hasName && req.Method == http.MethodGet:
			out, err = r.List(ctx)
		case hasName && req.Method == http.MethodGet:
			out, err = r.Get(ctx, name)
		case (hasName && req.Method == http.MethodPut) || (!hasName && req.Method == http.MethodPost):
			var def Definition
			if err = httperr.DecodeBody(req, &def, maxBodyBytes, true, "a valid allocation policy definition"); err == nil {
				ifMatch, ifNoneMatch := req.Header.Get("If-Match"), req.Header.Get("If-None-Match")
				switch {
				case !hasName:
					name, ifMatch, ifNoneMatch = def.Name, "", "*"
				case def.Name != "" && def.Name != name:
					err = dps.Errorf(dps.CodeInvalidArgument, "The body names the policy %s, the path %s.", def.Name, name)
				}
				var p *Policy
				var created bool
				if err == nil {
					p, created, err = r.Put(ctx, name, def, ifMatch, ifNoneMatch)
				}
				if err == nil {
					out = p
					if created {
						status = http.StatusCreated
					}
					opt.Logger.Info("allocation policy saved", "policy", name, "created", created, "etag", p.ETag)
				}
			}
		case hasName && req.Method == http.MethodDelete:
			if err = r.Delete(ctx, name, req.Header.Get("If-Match")); err == nil {
				opt.Logger.Info("allocation policy deleted", "policy", name)
				w.WriteHeader(http.StatusNoContent)
				return
			}
		default:
			err = dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", req.Method, req.URL.Path)
		}
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				var de *dps.Error
				errors.As(err, &de)
				err = de
			}
			httperr.Write(w, req, opt.Logger, err)
			return
		}
		if p, ok := out.(*Policy); ok && p.ETag != "" {
			w.Header().Set("ETag", p.ETag)
		}
		httperr.WriteJSON(w, status, out)
	})
}

// policyName finds the path segments after "allocationPolicies".
func policyName(u *url.URL) (name string, hasName, ok bool) {
	segs := strings.Split(strings.Trim(u.EscapedPath(), "/"), "/")
	for i, s := range segs {
		if !strings.EqualFold(s, "allocationPolicies") {
			continue
		}
		rest := segs[i+1:]
		switch {
		case len(rest) == 0:
			return "", false, true
		case len(rest) == 1:
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
