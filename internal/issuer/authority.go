package issuer

import (
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/dpsd/dpsd/api/dps"
)

// LocalName is the name under which dpsd's own local CA issues.
const LocalName = "local"

// Authority is a CA that issues device certificates.
type Authority struct {
	// Name is the name enrollments use for it.
	Name string
	// Cert is the CA certificate that signs; Chain its issuers above it,
	// in order, as devices receive them after their leaf.
	Cert  *x509.Certificate
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// Issued is a certificate issued for a csr.
type Issued struct {
	Leaf *x509.Certificate
	// Chain is the answer's issuedCertificateChain: base64 DER, leaf first,
	// then the authority's certificate and its chain.
	Chain []string
	Info  dps.IssuedCertificateInfo
}

// Issue signs req, which ParseRequest accepted, with a certificate for
// client authentication valid from now for p's validity, cut short to
// end with the authority's own certificate. The certificate carries only
// the request's subject common name and key; requested extensions are
// not copied, so a device cannot ask for more than a client certificate.
func (a *Authority) Issue(req *x509.CertificateRequest, p Policy, now time.Time) (*Issued, error) {
	p = p.withDefaults()
	notBefore := now.Add(-5 * time.Minute) // devices' clocks drift
	notAfter := now.Add(p.Validity)
	if notAfter.After(a.Cert.NotAfter) {
		notAfter = a.Cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, dps.Errorf(dps.CodeCertificateIssuanceNotConfigured, "The issuing CA %q has expired.", a.Name)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	serial.Add(serial, big.NewInt(1)) // never zero
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: req.Subject.CommonName},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, req.PublicKey, a.Key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate with CA %q: %w", a.Name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	chain := []string{base64.StdEncoding.EncodeToString(der), base64.StdEncoding.EncodeToString(a.Cert.Raw)}
	for _, c := range a.Chain {
		chain = append(chain, base64.StdEncoding.EncodeToString(c.Raw))
	}
	return &Issued{Leaf: leaf, Chain: chain, Info: InfoOf(a.Name, leaf)}, nil
}

// InfoOf describes an issued certificate for the registration record.
func InfoOf(authority string, c *x509.Certificate) dps.IssuedCertificateInfo {
	s1, s256 := sha1.Sum(c.Raw), sha256.Sum256(c.Raw)
	return dps.IssuedCertificateInfo{
		CertificateAuthorityName: authority,
		SubjectName:              c.Subject.String(),
		IssuerName:               c.Issuer.String(),
		SerialNumber:             strings.ToUpper(c.SerialNumber.Text(16)),
		SHA1Thumbprint:           strings.ToUpper(hex.EncodeToString(s1[:])),
		SHA256Thumbprint:         strings.ToUpper(hex.EncodeToString(s256[:])),
		NotBeforeUTC:             c.NotBefore.UTC(),
		NotAfterUTC:              c.NotAfter.UTC(),
	}
}
