package provision

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/issuer"
)

// Authorities finds the CA an enrollment's clientCertificateIssuancePolicy
// names; issuer.Registry implements it.
type Authorities interface {
	Authority(ctx context.Context, name string) (*issuer.Authority, error)
}

// issuance is a checked csr and the CA that will sign it.
type issuance struct {
	ca  *issuer.Authority
	csr *x509.CertificateRequest
}

// issuingCAName is the CA the enrollment or group that vouched for who
// names, or "".
func issuingCAName(who *vouched) string {
	switch {
	case who.enrollment != nil:
		return dps.IssuingCA(who.enrollment.ClientCertIssuancePolicy)
	case who.group != nil:
		return dps.IssuingCA(who.group.ClientCertIssuancePolicy)
	}
	return ""
}

// prepareIssuance checks the csr of req before anything is recorded, so
// that a refused csr is answered at once and changes nothing.
func (e *Engine) prepareIssuance(ctx context.Context, req *Request, who *vouched) (*issuance, error) {
	name := issuingCAName(who)
	if name == "" || e.opt.Authorities == nil {
		return nil, dps.Errorf(dps.CodeCertificateIssuanceNotConfigured,
			"The device sent a csr, but its enrollment names no issuing CA (clientCertificateIssuancePolicy.certificateAuthorityName).")
	}
	csr, err := issuer.ParseRequest(req.CSR, req.RegistrationID, e.opt.Issuance)
	if err != nil {
		return nil, err
	}
	ca, err := e.opt.Authorities.Authority(ctx, name)
	if err != nil {
		return nil, unavailable(err)
	}
	return &issuance{ca: ca, csr: csr}, nil
}

// carryIssued keeps in r, a new record over prev, the certificate issued
// to the device before, so its hub goes on accepting it, while it is valid
// and the enrollment still issues certificates.
func (e *Engine) carryIssued(r, prev *enroll.Registration, who *vouched) {
	if prev == nil || prev.IssuingCA == "" || prev.State.IssuedCertificate == nil {
		return
	}
	if issuingCAName(who) == "" || !e.opt.Now().Before(prev.State.IssuedCertificate.NotAfterUTC) {
		return
	}
	ic := *prev.State.IssuedCertificate
	r.State.IssuedCertificate = &ic
	r.IssuingCA = prev.IssuingCA
}

// applyIssuance issues the certificate of is (when set) into final, and
// makes the hub accept the device by the certificate its CA vouches for
// when it holds an issued one.
func (e *Engine) applyIssuance(is *issuance, dev *HubDevice, final *enroll.Registration) error {
	final.IssuedChain = nil
	if is != nil {
		issued, err := is.ca.Issue(is.csr, e.opt.Issuance, e.opt.Now())
		if err != nil {
			return err
		}
		info := issued.Info
		final.State.IssuedCertificate = &info
		final.IssuedChain = issued.Chain
		final.IssuingCA = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.ca.Cert.Raw}))
		e.log.Info("certificate issued", "registrationId", final.State.RegistrationID,
			"ca", is.ca.Name, "serial", info.SerialNumber, "notAfter", info.NotAfterUTC)
	}
	if final.IssuingCA != "" {
		// The device connects to its hub with the issued certificate:
		// its identity is a certificateAuthority one, and the hub trusts
		// the issuing CA (a built-in hub is told so by the registrar).
		dev.PrimaryKey, dev.SecondaryKey = "", ""
		dev.X509 = &HubX509{CACertificates: []string{strings.TrimSpace(final.IssuingCA) + "\n"}}
	}
	return nil
}
