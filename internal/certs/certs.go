package certs

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
)

// Kind is the store collection of CA certificates, keyed by name.
const Kind = store.KindCACertificate

// Limits, as Azure has them.
const (
	MaxCertificates = 25
	maxNameLength   = 256
)

// ErrNotFound is returned (wrapped, with a *dps.Error 404) for a
// certificate that does not exist.
var ErrNotFound = errors.New("certificate not found")

// Certificate is the wire form of a CA certificate, defined in api/admin.
type Certificate = admin.Certificate

// Properties is the wire form of a CA certificate's properties, defined in api/admin.
type Properties = admin.CertificateProperties

// doc is the stored form.
type doc struct {
	Name             string `json:"name"`
	Certificate      string `json:"certificate"` // PEM
	IsVerified       bool   `json:"isVerified"`
	VerificationCode string `json:"verificationCode,omitempty"`
}

// Registry reads and writes the CA certificates of an instance.
type Registry struct {
	st  store.Store
	now func() time.Time
}

// New returns the registry of the certificates in st. now is the clock for
// validity checks; nil means time.Now.
func New(st store.Store, now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	return &Registry{st: st, now: now}
}

func notFound(name string) error {
	return &notFoundError{dps.Errorf(dps.CodeNotFound, "The CA certificate %q was not found.", name)}
}

type notFoundError struct{ de *dps.Error }

func (e *notFoundError) Error() string   { return e.de.Message }
func (e *notFoundError) Unwrap() []error { return []error{ErrNotFound, e.de} }

// validateName applies Azure's certificate name rules: letters, digits,
// '-', '_' and '.'.
func validateName(name string) error {
	if name == "" || len(name) > maxNameLength {
		return dps.Errorf(dps.CodeInvalidArgument, "The certificate name must have 1 to %d characters.", maxNameLength)
	}
	for _, r := range name {
		if !(r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.", r))) {
			return dps.Errorf(dps.CodeInvalidArgument, "The certificate name %q contains %q; only letters, digits and '-', '_', '.' are allowed.", name, r)
		}
	}
	return nil
}

// parseCA reads a CA certificate in any encoding enroll accepts and checks
// that it can sign device certificates and is valid now.
func (r *Registry) parseCA(text string) (*x509.Certificate, error) {
	c, err := enroll.ParseCertificate(text)
	if err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The certificate cannot be read (send PEM, base64 DER or base64 of PEM): %v.", err)
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The certificate %q is not a CA certificate (its basic constraints do not say CA:TRUE).", enroll.FormatName(c.Subject))
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The certificate %q may not sign certificates (its key usage lacks keyCertSign).", enroll.FormatName(c.Subject))
	}
	if err := checkValidity(c, r.now()); err != nil {
		return nil, err
	}
	return c, nil
}

func checkValidity(c *x509.Certificate, now time.Time) error {
	switch {
	case now.After(c.NotAfter):
		return dps.Errorf(dps.CodeInvalidArgument, "The certificate %q expired on %s.", enroll.FormatName(c.Subject), c.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(c.NotBefore):
		return dps.Errorf(dps.CodeInvalidArgument, "The certificate %q is not valid before %s.", enroll.FormatName(c.Subject), c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// Put uploads a CA certificate under name. Without ifMatch it must be new
// (409 if the name is taken, as Azure requires the etag to replace one);
// with ifMatch ("*" or the etag) it replaces the existing one. A replaced
// certificate keeps its verification only if it is the same certificate.
// verified marks it verified at once, for operators who trust the upload
// itself (Azure's isVerified on upload).
func (r *Registry) Put(ctx context.Context, name, certificate string, verified bool, ifMatch string) (*Certificate, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	c, err := r.parseCA(certificate)
	if err != nil {
		return nil, err
	}
	d := &doc{Name: name, Certificate: enroll.CertificatePEM(c), IsVerified: verified}
	var cond store.Condition
	if ifMatch == "" {
		if err := r.checkLimit(ctx); err != nil {
			return nil, err
		}
		cond.MustNotExist = true
	} else {
		rec, old, err := r.load(ctx, name)
		if err != nil {
			return nil, err
		}
		if !enroll.ETagMatch(rec.ETag, ifMatch) {
			return nil, dps.Errorf(dps.CodePreconditionFailed, "The CA certificate %q has changed: If-Match %s does not match its etag.", name, ifMatch)
		}
		if old.Certificate == d.Certificate && old.IsVerified {
			d.IsVerified = true
		}
		d.Name = old.Name
		cond.IfMatch = rec.ETag
	}
	return r.save(ctx, d, cond)
}

func (r *Registry) checkLimit(ctx context.Context) error {
	recs, _, err := r.st.List(ctx, Kind, store.ListOptions{Limit: MaxCertificates})
	if err != nil {
		return fmt.Errorf("list CA certificates: %w", err)
	}
	if len(recs) >= MaxCertificates {
		return dps.Errorf(dps.CodeConflict, "A provisioning service holds at most %d CA certificates.", MaxCertificates)
	}
	return nil
}

func (r *Registry) save(ctx context.Context, d *doc, cond store.Condition) (*Certificate, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode CA certificate %q: %w", d.Name, err)
	}
	rec, err := r.st.Put(ctx, store.Record{Kind: Kind, ID: d.Name, Data: data}, cond)
	switch {
	case errors.Is(err, store.ErrExists):
		return nil, dps.Errorf(dps.CodeConflict, "The CA certificate %q already exists; send If-Match with its etag (or *) to replace it.", d.Name)
	case errors.Is(err, store.ErrPrecondition):
		return nil, dps.Errorf(dps.CodePreconditionFailed, "The CA certificate %q has changed: If-Match does not match its etag.", d.Name)
	case err != nil:
		return nil, fmt.Errorf("put CA certificate %q: %w", d.Name, err)
	}
	return view(rec, d)
}

func (r *Registry) load(ctx context.Context, name string) (store.Record, *doc, error) {
	if err := validateName(name); err != nil {
		return store.Record{}, nil, err
	}
	rec, err := r.st.Get(ctx, Kind, name)
	if errors.Is(err, store.ErrNotFound) {
		return store.Record{}, nil, notFound(name)
	}
	if err != nil {
		return store.Record{}, nil, fmt.Errorf("get CA certificate %q: %w", name, err)
	}
	var d doc
	if err := json.Unmarshal(rec.Data, &d); err != nil {
		return store.Record{}, nil, fmt.Errorf("decode CA certificate %q: %w", name, err)
	}
	d.Name = rec.ID
	return rec, &d, nil
}

// view is the API view of a stored certificate, without its code.
func view(rec store.Record, d *doc) (*Certificate, error) {
	c, err := enroll.ParseCertificate(d.Certificate)
	if err != nil {
		return nil, fmt.Errorf("stored CA certificate %q: %w", d.Name, err)
	}
	s1 := sha1.Sum(c.Raw)
	s256 := sha256.Sum256(c.Raw)
	return &Certificate{
		Name: d.Name,
		ETag: rec.ETag,
		Properties: Properties{
			Subject:          enroll.FormatName(c.Subject),
			Expiry:           c.NotAfter.UTC(),
			Thumbprint:       strings.ToUpper(hex.EncodeToString(s1[:])),
			SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(s256[:])),
			IsVerified:       d.IsVerified,
			Created:          rec.Created.UTC(),
			Updated:          rec.Updated.UTC(),
			Certificate:      d.Certificate,
		},
	}, nil
}

// Get returns one certificate.
func (r *Registry) Get(ctx context.Context, name string) (*Certificate, error) {
	rec, d, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	return view(rec, d)
}

// List returns every certificate, in name order.
func (r *Registry) List(ctx context.Context) ([]*Certificate, error) {
	var out []*Certificate
	opt := store.ListOptions{Limit: 100}
	for range 100 { // bounded: the limit is 25 certificates
		recs, more, err := r.st.List(ctx, Kind, opt)
		if err != nil {
			return nil, fmt.Errorf("list CA certificates: %w", err)
		}
		for _, rec := range recs {
			var d doc
			if err := json.Unmarshal(rec.Data, &d); err != nil {
				return nil, fmt.Errorf("decode CA certificate %q: %w", rec.ID, err)
			}
			d.Name = rec.ID
			c, err := view(rec, &d)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		if !more || len(recs) == 0 {
			break
		}
		opt.After = recs[len(recs)-1].ID
	}
	return out, nil
}

// Delete removes a certificate. Enrollments that name it stop vouching for
// devices at once.
func (r *Registry) Delete(ctx context.Context, name, ifMatch string) error {
	if err := validateName(name); err != nil {
		return err
	}
	err := r.st.Delete(ctx, Kind, name, store.Condition{IfMatch: enroll.NormalizeETag(ifMatch)})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound(name)
	case errors.Is(err, store.ErrPrecondition):
		return dps.Errorf(dps.CodePreconditionFailed, "The CA certificate %q has changed: If-Match %s does not match its etag.", name, ifMatch)
	case err != nil:
		return fmt.Errorf("delete CA certificate %q: %w", name, err)
	}
	return nil
}

// GenerateVerificationCode issues a new random verification code for the
// certificate; the answer carries it in Properties.VerificationCode. A new
// code replaces the previous one. ifMatch is optional.
func (r *Registry) GenerateVerificationCode(ctx context.Context, name, ifMatch string) (*Certificate, error) {
	rec, d, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if ifMatch != "" && !enroll.ETagMatch(rec.ETag, ifMatch) {
		return nil, dps.Errorf(dps.CodePreconditionFailed, "The CA certificate %q has changed: If-Match %s does not match its etag.", name, ifMatch)
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("verification code: %w", err)
	}
	d.VerificationCode = strings.ToUpper(hex.EncodeToString(b[:]))
	c, err := r.save(ctx, d, store.Condition{IfMatch: rec.ETag})
	if err != nil {
		return nil, err
	}
	c.Properties.VerificationCode = d.VerificationCode
	return c, nil
}

// Verify completes the proof of possession: proof must be a certificate
// whose subject CN is the current verification code, signed by the
// certificate's key and valid now. A successful verification uses up the
// code. ifMatch is optional.
func (r *Registry) Verify(ctx context.Context, name, ifMatch, proof string) (*Certificate, error) {
	rec, d, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if ifMatch != "" && !enroll.ETagMatch(rec.ETag, ifMatch) {
		return nil, dps.Errorf(dps.CodePreconditionFailed, "The CA certificate %q has changed: If-Match %s does not match its etag.", name, ifMatch)
	}
	if d.VerificationCode == "" {
		return nil, dps.Errorf(dps.CodeBadRequest, "No verification code is pending for the CA certificate %q; generate one first.", name)
	}
	p, err := enroll.ParseCertificate(proof)
	if err != nil {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The verification certificate cannot be read (send PEM, base64 DER or base64 of PEM): %v.", err)
	}
	if p.Subject.CommonName != d.VerificationCode {
		return nil, dps.Errorf(dps.CodeBadRequest, "Verification failed: the verification certificate's subject CN must be the verification code %s, not %q.", d.VerificationCode, p.Subject.CommonName)
	}
	ca, err := enroll.ParseCertificate(d.Certificate)
	if err != nil {
		return nil, fmt.Errorf("stored CA certificate %q: %w", name, err)
	}
	if err := p.CheckSignatureFrom(ca); err != nil {
		return nil, dps.Errorf(dps.CodeBadRequest, "Verification failed: the verification certificate is not signed by the CA certificate %q (%v).", name, err)
	}
	if err := checkValidity(p, r.now()); err != nil {
		return nil, dps.Errorf(dps.CodeBadRequest, "Verification failed: %s", dps.AsError(err).Message)
	}
	d.IsVerified, d.VerificationCode = true, ""
	return r.save(ctx, d, store.Condition{IfMatch: rec.ETag})
}

// Verified returns the named certificate if it exists and is verified, for
// attestation; otherwise an error that says why (wrapping ErrNotFound when
// it does not exist).
func (r *Registry) Verified(ctx context.Context, name string) (*x509.Certificate, error) {
	_, d, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if !d.IsVerified {
		return nil, fmt.Errorf("CA certificate %q is not verified", name)
	}
	c, err := enroll.ParseCertificate(d.Certificate)
	if err != nil {
		return nil, fmt.Errorf("stored CA certificate %q: %w", name, err)
	}
	return c, nil
}

// VerifiedAll returns every verified certificate by lower-cased name, for
// attestation against caReferences.
func (r *Registry) VerifiedAll(ctx context.Context) (map[string]*x509.Certificate, error) {
	out := make(map[string]*x509.Certificate)
	opt := store.ListOptions{Limit: 100}
	for range 100 { // bounded: the limit is 25 certificates
		recs, more, err := r.st.List(ctx, Kind, opt)
		if err != nil {
			return nil, fmt.Errorf("list CA certificates: %w", err)
		}
		for _, rec := range recs {
			var d doc
			if err := json.Unmarshal(rec.Data, &d); err != nil || !d.IsVerified {
				continue
			}
			c, err := enroll.ParseCertificate(d.Certificate)
			if err != nil {
				continue
			}
			out[strings.ToLower(rec.ID)] = c
		}
		if !more || len(recs) == 0 {
			break
		}
		opt.After = recs[len(recs)-1].ID
	}
	return out, nil
}
