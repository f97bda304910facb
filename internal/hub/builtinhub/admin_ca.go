package builtinhub

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/jsonlimit"
)

// CACertificateUpload is the body of PUT
// /dpsd/hubs/{name}/certificates/{cert}, and (certificate alone) of POST
// …/{cert}/verify.
type CACertificateUpload struct {
	Certificate string `json:"certificate"` // PEM
	IsVerified  bool   `json:"isVerified,omitempty"`
}

// serveCertificates is the management API of a hub's CA certificates:
//
//	GET    /dpsd/hubs/{name}/certificates                list
//	PUT    /dpsd/hubs/{name}/certificates/{cert}         upload (CACertificateUpload)
//	GET    /dpsd/hubs/{name}/certificates/{cert}         show
//	DELETE /dpsd/hubs/{name}/certificates/{cert}         delete (If-Match)
//	POST   /dpsd/hubs/{name}/certificates/{cert}/generateVerificationCode  (If-Match)
//	POST   /dpsd/hubs/{name}/certificates/{cert}/verify  proof of possession (If-Match)
func (m *Manager) serveCertificates(w http.ResponseWriter, r *http.Request, h *Hub, segs []string) {
	ctx := r.Context()
	etag := r.Header.Get("If-Match")
	var out any
	var err error
	status := http.StatusOK
	switch {
	case len(segs) == 0 && r.Method == http.MethodGet:
		out, err = h.ListCACertificates(ctx)
	case len(segs) == 1 && r.Method == http.MethodGet:
		out, err = h.CACertificateInfo(ctx, segs[0])
	case len(segs) == 1 && r.Method == http.MethodPut:
		var in CACertificateUpload
		if !readAdminJSON(w, r, &in) {
			return
		}
		out, err = h.UploadCACertificate(ctx, segs[0], in.Certificate, in.IsVerified)
		status = http.StatusCreated
	case len(segs) == 1 && r.Method == http.MethodDelete:
		if err = h.DeleteCACertificate(ctx, segs[0], etag); err == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
	case len(segs) == 2 && segs[1] == "generateVerificationCode" && r.Method == http.MethodPost:
		out, err = h.GenerateVerificationCode(ctx, segs[0], etag)
	case len(segs) == 2 && segs[1] == "verify" && r.Method == http.MethodPost:
		var in CACertificateUpload
		if !readAdminJSON(w, r, &in) {
			return
		}
		out, err = h.VerifyCACertificate(ctx, segs[0], etag, in.Certificate)
	default:
		httperr.Write(w, r, nil, dps.Errorf(dps.CodeNotFound, "No such path: %s %s", r.Method, r.URL.Path))
		return
	}
	if err != nil {
		m.adminError(w, r, err)
		return
	}
	httperr.WriteJSON(w, status, out)
}

func readAdminJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err == nil {
		err = cmp.Or(jsonlimit.Check(body), json.Unmarshal(body, v))
	}
	if err != nil {
		httperr.Write(w, r, nil, dps.Errorf(dps.CodeInvalidArgument, "The body is not valid JSON: %v", err))
		return false
	}
	return true
}

func certPath(hub, cert string) string {
	p := "/" + url.PathEscape(hub) + "/certificates"
	if cert != "" {
		p += "/" + url.PathEscape(cert)
	}
	return p
}

// CACertificates lists a hub's CA certificates.
func (c *AdminClient) CACertificates(ctx context.Context, hub string) ([]*CACertificate, error) {
	var out []*CACertificate
	return out, c.do(ctx, http.MethodGet, certPath(hub, ""), nil, nil, &out)
}

// CACertificate shows a hub's CA certificate.
func (c *AdminClient) CACertificate(ctx context.Context, hub, name string) (*CACertificate, error) {
	var out CACertificate
	return &out, c.do(ctx, http.MethodGet, certPath(hub, name), nil, nil, &out)
}

// UploadCACertificate uploads a CA certificate (PEM) to a hub.
func (c *AdminClient) UploadCACertificate(ctx context.Context, hub, name, certPEM string, verified bool) (*CACertificate, error) {
	var out CACertificate
	return &out, c.do(ctx, http.MethodPut, certPath(hub, name), nil, CACertificateUpload{Certificate: certPEM, IsVerified: verified}, &out)
}

// DeleteCACertificate deletes a hub's CA certificate; etag "" deletes any
// version.
func (c *AdminClient) DeleteCACertificate(ctx context.Context, hub, name, etag string) error {
	return c.doMatch(ctx, http.MethodDelete, certPath(hub, name), etag, nil, nil)
}

// GenerateVerificationCode asks for a CA certificate's verification code.
func (c *AdminClient) GenerateVerificationCode(ctx context.Context, hub, name, etag string) (*CACertificate, error) {
	var out CACertificate
	return &out, c.doMatch(ctx, http.MethodPost, certPath(hub, name)+"/generateVerificationCode", etag, struct{}{}, &out)
}

// VerifyCACertificate sends the proof of possession of a CA certificate:
// a certificate (PEM) signed by it whose subject CN is the verification
// code.
func (c *AdminClient) VerifyCACertificate(ctx context.Context, hub, name, etag, verificationPEM string) (*CACertificate, error) {
	var out CACertificate
	return &out, c.doMatch(ctx, http.MethodPost, certPath(hub, name)+"/verify", etag, CACertificateUpload{Certificate: verificationPEM}, &out)
}
