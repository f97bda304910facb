package builtinhub

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/store"
)

// KindCA holds a built-in hub's CA certificates, managed as
// "az iot hub certificate" manages an Azure hub's; id = hub/name,
// Ref = hub name.
//
// A hub trusts a CA certificate for certificateAuthority devices when it
// was uploaded and verified (proof of possession, or uploaded as
// verified). Besides, a device that DPS registered through a group or an
// enrollment whose CA vouched for it is trusted through that CA, for that
// device alone (deviceDoc.VouchedCAs): the provisioning service already
// checked the CA, and nothing else may connect through it. Records stored
// before certificates were managed (DPS added every group's CA to the hub)
// stay trusted, shown with origin "provisioning", until deleted.
const KindCA = store.KindHubCA

// maxCAs bounds the CA certificates of one hub.
const maxCAs = 1000

// maxVouchedCAs bounds the CA certificates kept with one device.
const maxVouchedCAs = 10

// Origins of a hub's CA certificates.
const (
	OriginUploaded     = "uploaded"
	OriginProvisioning = "provisioning"
)

type caDoc struct {
	Name             string    `json:"name,omitempty"`
	Certificate      string    `json:"certificate"` // PEM
	Added            time.Time `json:"added"`
	Updated          time.Time `json:"updated,omitempty"`
	Origin           string    `json:"origin,omitempty"` // "" for records of before, added by DPS
	Verified         bool      `json:"verified,omitempty"`
	VerificationCode string    `json:"verificationCode,omitempty"`
}

// CACertificate is a hub CA certificate as the management API shows it,
// after the properties of "az iot hub certificate show".
type CACertificate struct {
	Name             string    `json:"name"`
	Subject          string    `json:"subject"`
	Thumbprint       string    `json:"thumbprint"`       // SHA-1, hex, as Azure shows it
	SHA256Thumbprint string    `json:"sha256Thumbprint"` // hex
	Expiry           time.Time `json:"expiry"`
	IsVerified       bool      `json:"isVerified"`
	Origin           string    `json:"origin"`
	Created          time.Time `json:"created"`
	Updated          time.Time `json:"updated"`
	ETag             string    `json:"etag"`
	VerificationCode string    `json:"verificationCode,omitempty"`
	Certificate      string    `json:"certificate"`
}

var caNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func caError(status int, format string, args ...any) error {
	code := azurehub.CodeArgumentInvalid
	switch status {
	case http.StatusNotFound:
		code = "CertificateNotFound"
	case http.StatusConflict:
		code = "CertificateAlreadyExists"
	case http.StatusPreconditionFailed:
		code = azurehub.CodePreconditionFailed
	}
	return azurehub.Errorf(status, code, format, args...)
}

func parseCertPEM(certPEM string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, caError(http.StatusBadRequest, "The certificate must be one PEM certificate.")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, caError(http.StatusBadRequest, "The certificate cannot be read: %v", err)
	}
	return c, nil
}

func (d *caDoc) view(etag string) *CACertificate {
	out := &CACertificate{Name: d.Name, IsVerified: d.trusted(), Origin: d.Origin, Created: d.Added, Updated: d.Updated,
		ETag: etag, VerificationCode: d.VerificationCode, Certificate: d.Certificate}
	if out.Origin == "" {
		out.Origin = OriginProvisioning
	}
	if out.Updated.IsZero() {
		out.Updated = d.Added
	}
	if c, err := parseCertPEM(d.Certificate); err == nil {
		s1, s256 := sha1.Sum(c.Raw), sha256.Sum256(c.Raw)
		out.Subject, out.Expiry = c.Subject.String(), c.NotAfter
		out.Thumbprint, out.SHA256Thumbprint = strings.ToUpper(hex.EncodeToString(s1[:])), strings.ToUpper(hex.EncodeToString(s256[:]))
	}
	return out
}

// trusted reports whether the hub trusts the certificate for every
// certificateAuthority device: verified, or stored before certificates
// were managed.
func (d *caDoc) trusted() bool { return d.Verified || d.Origin == "" }

func (h *Hub) caKey(name string) string { return deviceKey(h.cfg.Name, name) }

func (h *Hub) loadCA(ctx context.Context, name string) (*caDoc, string, error) {
	if !caNameRE.MatchString(name) {
		return nil, "", caError(http.StatusBadRequest, "Certificate names have 1 to 64 letters, digits, '.', '_' or '-'.")
	}
	rec, err := h.st.Get(ctx, KindCA, h.caKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", caError(http.StatusNotFound, "Certificate %s not found.", name)
	}
	if err != nil {
		return nil, "", storeErr(err)
	}
	var d caDoc
	if err := json.Unmarshal(rec.Data, &d); err != nil {
		return nil, "", fmt.Errorf("CA certificate %s: decode: %w", name, err)
	}
	if d.Name == "" {
		d.Name = name
	}
	return &d, rec.ETag, nil
}

func (h *Hub) saveCA(ctx context.Context, d *caDoc, cond store.Condition) (string, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return "", fmt.Errorf("encode CA certificate: %w", err)
	}
	rec, err := h.st.Put(ctx, store.Record{Kind: KindCA, ID: h.caKey(d.Name), Ref: h.cfg.Name, Data: data}, cond)
	switch {
	case errors.Is(err, store.ErrExists):
		return "", caError(http.StatusConflict, "Certificate %s already exists.", d.Name)
	case errors.Is(err, store.ErrPrecondition):
		return "", caError(http.StatusPreconditionFailed, "Certificate %s has changed: its etag does not match.", d.Name)
	case errors.Is(err, store.ErrNotFound):
		return "", caError(http.StatusNotFound, "Certificate %s not found.", d.Name)
	case err != nil:
		return "", storeErr(err)
	}
	return rec.ETag, nil
}

// casMatch checks an If-Match against a certificate's etag; "" and "*"
// match any.
func casMatch(ifMatch, etag string) store.Condition {
	if n := enroll.NormalizeETag(ifMatch); n != "" && n != "*" {
		return store.Condition{IfMatch: n}
	}
	return store.Condition{IfMatch: etag}
}

// UploadCACertificate adds a CA certificate under name. Unless verified
// is set (the operator vouches for it, as "az iot hub certificate create
// --verified"), it is trusted only after proof of possession.
func (h *Hub) UploadCACertificate(ctx context.Context, name, certPEM string, verified bool) (*CACertificate, error) {
	if !caNameRE.MatchString(name) {
		return nil, caError(http.StatusBadRequest, "Certificate names have 1 to 64 letters, digits, '.', '_' or '-'.")
	}
	c, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	if !c.IsCA {
		return nil, caError(http.StatusBadRequest, "The certificate is not a CA certificate (basic constraints CA:TRUE).")
	}
	all, err := h.listCAs(ctx)
	if err != nil {
		return nil, err
	}
	if len(all) >= maxCAs {
		return nil, caError(http.StatusBadRequest, "The hub has %d CA certificates, the most it may have.", maxCAs)
	}
	sum := sha256.Sum256(c.Raw)
	for _, x := range all {
		if x.view("").SHA256Thumbprint == strings.ToUpper(hex.EncodeToString(sum[:])) {
			return nil, caError(http.StatusConflict, "The certificate is already uploaded as %s.", x.Name)
		}
	}
	now := h.now().UTC()
	d := &caDoc{Name: name, Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})),
		Added: now, Updated: now, Origin: OriginUploaded, Verified: verified}
	etag, err := h.saveCA(ctx, d, store.Condition{MustNotExist: true})
	if err != nil {
		return nil, err
	}
	h.log.Info("hub CA certificate uploaded", "name", name, "subject", c.Subject.String(), "verified", verified)
	return d.view(etag), nil
}

// CACertificateInfo returns a CA certificate.
func (h *Hub) CACertificateInfo(ctx context.Context, name string) (*CACertificate, error) {
	d, etag, err := h.loadCA(ctx, name)
	if err != nil {
		return nil, err
	}
	return d.view(etag), nil
}

// ListCACertificates returns the hub's CA certificates.
func (h *Hub) ListCACertificates(ctx context.Context) ([]*CACertificate, error) {
	all, err := h.listCAs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*CACertificate, 0, len(all))
	for _, d := range all {
		out = append(out, d.view(d.etag))
	}
	return out, nil
}

type caRecord struct {
	caDoc
	etag string
}

func (h *Hub) listCAs(ctx context.Context) ([]*caRecord, error) {
	recs, _, err := h.st.List(ctx, KindCA, store.ListOptions{Ref: h.cfg.Name, Limit: maxCAs})
	if err != nil {
		return nil, storeErr(err)
	}
	out := make([]*caRecord, 0, len(recs))
	for _, rec := range recs {
		var d caDoc
		if json.Unmarshal(rec.Data, &d) != nil {
			continue
		}
		if d.Name == "" {
			d.Name = strings.TrimPrefix(rec.ID, h.cfg.Name+"/")
		}
		out = append(out, &caRecord{caDoc: d, etag: rec.ETag})
	}
	return out, nil
}

// DeleteCACertificate deletes a CA certificate; etag "" or "*" deletes
// any version.
func (h *Hub) DeleteCACertificate(ctx context.Context, name, etag string) error {
	_, cur, err := h.loadCA(ctx, name)
	if err != nil {
		return err
	}
	err = h.st.Delete(ctx, KindCA, h.caKey(name), casMatch(etag, cur))
	switch {
	case errors.Is(err, store.ErrPrecondition):
		return caError(http.StatusPreconditionFailed, "Certificate %s has changed: its etag does not match.", name)
	case errors.Is(err, store.ErrNotFound):
		return caError(http.StatusNotFound, "Certificate %s not found.", name)
	case err != nil:
		return storeErr(err)
	}
	h.log.Info("hub CA certificate deleted", "name", name)
	return nil
}

// GenerateVerificationCode gives a CA certificate a new verification
// code: proof of possession is a certificate with that code as its
// subject common name, signed by the CA's key.
func (h *Hub) GenerateVerificationCode(ctx context.Context, name, etag string) (*CACertificate, error) {
	d, cur, err := h.loadCA(ctx, name)
	if err != nil {
		return nil, err
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	d.VerificationCode = strings.ToUpper(hex.EncodeToString(b[:]))
	d.Updated = h.now().UTC()
	if d.Origin == "" {
		d.Origin = OriginProvisioning
		d.Verified = true // it was trusted; a new code does not take that away
	}
	ntag, err := h.saveCA(ctx, d, casMatch(etag, cur))
	if err != nil {
		return nil, err
	}
	return d.view(ntag), nil
}

// VerifyCACertificate checks proof of possession: verificationPEM must be
// signed by the CA certificate's key, be valid now and name the current
// verification code as its subject common name. The CA is then trusted.
func (h *Hub) VerifyCACertificate(ctx context.Context, name, etag, verificationPEM string) (*CACertificate, error) {
	d, cur, err := h.loadCA(ctx, name)
	if err != nil {
		return nil, err
	}
	if d.VerificationCode == "" {
		return nil, caError(http.StatusBadRequest, "Certificate %s has no verification code: generate one first.", name)
	}
	ca, err := parseCertPEM(d.Certificate)
	if err != nil {
		return nil, err
	}
	v, err := parseCertPEM(verificationPEM)
	if err != nil {
		return nil, err
	}
	if err := v.CheckSignatureFrom(ca); err != nil {
		return nil, caError(http.StatusBadRequest, "The verification certificate is not signed by certificate %s: %v", name, err)
	}
	if v.Subject.CommonName != d.VerificationCode {
		return nil, caError(http.StatusBadRequest, "The verification certificate's subject CN %q is not the verification code.", v.Subject.CommonName)
	}
	if now := h.now(); now.Before(v.NotBefore) || now.After(v.NotAfter) {
		return nil, caError(http.StatusBadRequest, "The verification certificate is expired or not yet valid.")
	}
	d.Verified, d.VerificationCode, d.Updated = true, "", h.now().UTC()
	ntag, err := h.saveCA(ctx, d, casMatch(etag, cur))
	if err != nil {
		return nil, err
	}
	h.log.Info("hub CA certificate verified", "name", name, "subject", ca.Subject.String())
	return d.view(ntag), nil
}

// TrustDeviceCAs records the CA certificates that vouched for a
// certificateAuthority device when DPS registered it: the device may
// connect through them, and no other device. It implements
// azurehub.DeviceCAs.
func (h *Hub) TrustDeviceCAs(ctx context.Context, id string, certPEMs []string) error {
	pems, err := normalizeCAs(certPEMs)
	if err != nil {
		return err
	}
	_, err = h.modify(ctx, id, func(d *deviceDoc) error {
		d.VouchedCAs = pems
		return nil
	})
	return err
}

var _ azurehub.DeviceCAs = (*Hub)(nil)

// normalizeCAs checks PEM certificates and re-encodes them, at most
// maxVouchedCAs.
func normalizeCAs(certPEMs []string) ([]string, error) {
	var pems []string
	for _, p := range certPEMs {
		c, err := parseCertPEM(p)
		if err != nil {
			return nil, err
		}
		pems = append(pems, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	if len(pems) > maxVouchedCAs {
		pems = pems[:maxVouchedCAs]
	}
	return pems, nil
}

// trustedCAs are the CA certificates a device may chain to: the hub's
// trusted ones and those that vouched for the device.
func (h *Hub) trustedCAs(ctx context.Context, d *deviceDoc) ([]*x509.Certificate, error) {
	all, err := h.listCAs(ctx)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, x := range all {
		if !x.trusted() {
			continue
		}
		if c, err := parseCertPEM(x.Certificate); err == nil {
			out = append(out, c)
		}
	}
	for _, p := range d.VouchedCAs {
		if c, err := parseCertPEM(p); err == nil {
			out = append(out, c)
		}
	}
	return out, nil
}

// checkCADevice authenticates a certificateAuthority device: its
// certificate names it (subject CN = device id), is valid for client
// authentication and chains to a CA it may use (trustedCAs). The TLS
// handshake already proved the device holds the certificate's key.
func (h *Hub) checkCADevice(ctx context.Context, d *deviceDoc, peers []*x509.Certificate) error {
	if len(peers) == 0 {
		return errors.New("certificateAuthority device presented no certificate")
	}
	leaf := peers[0]
	if leaf.Subject.CommonName != d.DeviceID {
		return fmt.Errorf("client certificate CN %q is not the device id", leaf.Subject.CommonName)
	}
	cas, err := h.trustedCAs(ctx, d)
	if err != nil {
		return err
	}
	if len(cas) == 0 {
		return errors.New("no verified CA certificate of the hub, and none that vouched for the device at provisioning")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
		inter.AddCert(c)
	}
	for _, c := range peers[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   h.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	return nil
}
