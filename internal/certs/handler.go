package certs

import (
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
)

// HandlerOptions configure the HTTP handler.
type HandlerOptions struct {
	// Authorize is called first for every request; an error (a *dps.Error
	// for a specific code, 401000 otherwise) is answered as is. Azure puts
	// certificates under ServiceConfig.
	Authorize func(*http.Request) error
	Logger    *slog.Logger
}

// maxBodyBytes bounds a request body: one certificate in PEM.
const maxBodyBytes = 64 << 10

// Body is what clients send to upload a certificate (PUT) or to verify one
// (POST .../verify): Azure's CertificateBodyDescription. Properties lets a
// client send back the shape it read.
type Body struct {
	Certificate string `json:"certificate,omitempty"`
	IsVerified  bool   `json:"isVerified,omitempty"`
	Properties  *struct {
		Certificate string `json:"certificate,omitempty"`
		IsVerified  bool   `json:"isVerified,omitempty"`
	} `json:"properties,omitempty"`
}

func (b *Body) certificate() (string, bool) {
	if b.Certificate == "" && b.Properties != nil {
		return b.Properties.Certificate, b.Properties.IsVerified
	}
	return b.Certificate, b.IsVerified
}

// List is the answer of a list request, as Azure's CertificateListDescription.
type List struct {
	Value []*Certificate `json:"value"`
}

// Handler serves dpsd's extension API for CA certificates, shaped like
// Azure's certificates resource of a provisioning service:
//
//	GET    .../certificates                               list → List
//	GET    .../certificates/{name}                        one certificate
//	PUT    .../certificates/{name}                        upload: Body → 201 (200 when replaced; If-Match to replace)
//	DELETE .../certificates/{name}                        → 204 (If-Match optional)
//	POST   .../certificates/{name}/generateVerificationCode   → Certificate with properties.verificationCode
//	POST   .../certificates/{name}/verify                  Body (the verification certificate) → Certificate
//
// It finds the "certificates" segment wherever it is mounted (dpsd mounts
// it at /dpsd/certificates).
func (r *Registry) Handler(opt HandlerOptions) http.Handler {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &handler{reg: r, opt: opt}
}

type handler struct {
	reg *Registry
	opt HandlerOptions
}

func (h *handler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !httperr.Authorized(w, req, h.opt.Authorize) {
		return
	}
	name, action, ok := parsePath(req.URL)
	if !ok {
		httperr.Write(w, req, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s", req.URL.Path))
		return
	}
	ctx := req.Context()
	ifMatch := req.Header.Get("If-Match")
	var (
		status = http.StatusOK
		out    any
		err    error
	)
	switch {
	case name == "" && req.Method == http.MethodGet:
		var list []*Certificate
		if list, err = h.reg.List(ctx); err == nil {
			if list == nil {
				list = []*Certificate{}
			}
			out = &List{Value: list}
		}
	case name != "" && action == "" && req.Method == http.MethodGet:
		out, err = h.reg.Get(ctx, name)
	case name != "" && action == "" && req.Method == http.MethodPut:
		var b Body
		if err = httperr.DecodeBody(req, &b, maxBodyBytes, false, "valid JSON"); err == nil {
			text, verified := b.certificate()
			var c *Certificate
			if c, err = h.reg.Put(ctx, name, text, verified, ifMatch); err == nil {
				out = c
				if ifMatch == "" {
					status = http.StatusCreated
				}
				h.opt.Logger.Info("CA certificate uploaded", "name", c.Name, "subject", c.Properties.Subject, "verified", c.Properties.IsVerified)
			}
		}
	case name != "" && action == "" && req.Method == http.MethodDelete:
		if err = h.reg.Delete(ctx, name, ifMatch); err == nil {
			h.opt.Logger.Info("CA certificate deleted", "name", name)
			w.WriteHeader(http.StatusNoContent)
			return
		}
	case name != "" && action == "generateverificationcode" && req.Method == http.MethodPost:
		out, err = h.reg.GenerateVerificationCode(ctx, name, ifMatch)
	case name != "" && action == "verify" && req.Method == http.MethodPost:
		var b Body
		if err = httperr.DecodeBody(req, &b, maxBodyBytes, false, "valid JSON"); err == nil {
			text, _ := b.certificate()
			var c *Certificate
			if c, err = h.reg.Verify(ctx, name, ifMatch, text); err == nil {
				out = c
				h.opt.Logger.Info("CA certificate verified", "name", c.Name, "subject", c.Properties.Subject)
			}
		}
	default:
		err = dps.Errorf(dps.CodeMethodNotAllowed, "%s is not supported on %s.", req.Method, req.URL.Path)
	}
	if err != nil {
		httperr.Write(w, req, h.opt.Logger, err)
		return
	}
	if c, ok := out.(*Certificate); ok && c.ETag != "" {
		w.Header().Set("ETag", `"`+c.ETag+`"`)
	}
	httperr.WriteJSON(w, status, out)
}

// parsePath finds what follows the "certificates" segment: nothing (the
// collection), a name, or a name and an action (lower-cased).
func parsePath(u *url.URL) (name, action string, ok bool) {
	segs := strings.Split(strings.Trim(u.EscapedPath(), "/"), "/")
	for i, s := range segs {
		if !strings.EqualFold(s, "certificates") {
			continue
		}
		rest := segs[i+1:]
		if len(rest) == 0 || (len(rest) == 1 && rest[0] == "") {
			return "", "", true
		}
		if len(rest) > 2 {
			return "", "", false
		}
		n, err := url.PathUnescape(rest[0])
		if err != nil || n == "" {
			return "", "", false
		}
		if len(rest) == 2 {
			action = strings.ToLower(rest[1])
		}
		return n, action, true
	}
	return "", "", false
}
